//! Training: the loop and the weight-delivery strategies, data sets, tokenizers, checkpoints,
//! metrics, reports and sampling.

pub mod checkpoint;
pub mod delivery;
pub mod trainer;

//! Training: the loop and the weight-delivery strategies, data sets, tokenizers, checkpoints,
//! metrics, reports and sampling.

pub mod checkpoint;
pub mod data;
pub mod delivery;
pub mod priority;
pub mod run;
pub mod tokenizer;
pub mod trainer;

pub use data::embedded_corpus;

//! Training: the loop and the weight-delivery strategies, data sets, tokenizers, checkpoints,
//! metrics, reports and sampling.

pub mod data;
pub mod tokenizer;

pub use data::embedded_corpus;

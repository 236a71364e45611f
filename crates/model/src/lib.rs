//! Transformer models: named configurations, parameters in one flat buffer with named views,
//! the MIL kernels of a training step, and the math that stays on the host.

pub mod config;
pub mod init;
pub mod io;
pub mod params;

pub use config::{ConfigError, ModelConfig};
pub use params::{LayerTensor, ParamLayout, Params, TensorSpec};

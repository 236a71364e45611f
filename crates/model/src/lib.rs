//! Transformer models: named configurations, parameters in one flat buffer with named views,
//! the MIL kernels of a training step, and the math that stays on the host.

pub mod config;
pub mod generate;
pub mod host;
pub mod init;
pub mod io;
pub mod kernels;
pub mod optim;
pub mod params;
pub mod step;

pub use config::{ConfigError, ModelConfig};
pub use params::{LayerTensor, ParamLayout, Params, TensorSpec};

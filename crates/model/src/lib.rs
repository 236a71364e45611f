//! Transformer models: named configurations, parameters in one flat buffer with named views,
//! the MIL kernels of a training step, and the math that stays on the host.
//!
//! The third layer (mil → device → model → train → cli). It owns what a model is
//! ([`ModelConfig`], [`ParamLayout`], [`Params`], [`init`]), the generators of each layer's six
//! MIL kernels ([`kernels`]), one training micro-step over a compiled kernel set ([`step`]:
//! forward and backward on the device, embedding, loss, classifier and weight gradients on the
//! host), AdamW and the schedule ([`optim`]), sampling ([`generate`]) and llama2.c and
//! safetensors files ([`io`]). It runs on any [`anetrain_device::Device`]; the training loop
//! that drives it is `anetrain-train`'s.
//!
//! # One training step on the CPU device
//!
//! ```
//! use anetrain_device::host_math::HostMath;
//! use anetrain_device::{DeviceSpec, NumericMode};
//! use anetrain_model::init::init_params;
//! use anetrain_model::optim::{AdamState, AdamW};
//! use anetrain_model::step::{
//!     compile_kernel_set, forward_loss, micro_step, SharedKernel, StepBuffers, WeightSnapshot,
//! };
//! use anetrain_model::{ModelConfig, ParamLayout, Params};
//! use std::sync::Arc;
//!
//! // A very small model: one layer, width 16, two heads, 32 tokens, windows of 8.
//! let config = ModelConfig {
//!     name: "toy".into(),
//!     dim: 16,
//!     hidden: 32,
//!     n_layers: 1,
//!     n_heads: 2,
//!     n_kv_heads: 2,
//!     head_dim: 8,
//!     vocab: 32,
//!     seq_len: 8,
//!     ..ModelConfig::tiny()
//! };
//! config.validate()?;
//! let open = DeviceSpec { threads: Some(1), ..DeviceSpec::cpu(NumericMode::Fp32) }.open()?;
//! let (device, clock) = (&*open.device, &*open.clock);
//! // The host's matrix products: CBLAS where this build has it, on one thread otherwise.
//! let host = HostMath::best_built(1);
//!
//! let mut params = init_params(Arc::new(ParamLayout::new(&config)), 42);
//! let window: Vec<u32> = (0..9).map(|i| (5 * i + 1) % 32).collect();
//! let (tokens, targets) = (&window[..8], &window[1..]);
//!
//! // Compile the layers' kernels with these weights baked in, and run one micro-step.
//! let snapshot = WeightSnapshot { version: 0, params: Arc::new(params.clone()) };
//! let mut set = compile_kernel_set(device, snapshot)?;
//! let mut shared = SharedKernel::compile(device, &params)?;
//! let mut buf = StepBuffers::new(&config);
//! let mut grads = Params::zeros(params.layout.clone());
//! let (loss, _timing) = micro_step(
//!     device, clock, &mut set, &mut shared, &mut buf, tokens, targets, 1.0, &mut grads, host,
//! )?;
//! // Fresh weights predict nearly uniformly: the loss is close to ln(32).
//! assert!((loss - 32f32.ln()).abs() < 0.1, "{loss}");
//! assert!(grads.data.iter().any(|&g| g != 0.0));
//!
//! // One AdamW update, a new kernel set with the new weights: the window's loss drops.
//! let mut adam = AdamState::new(&params);
//! AdamW::default().update(&mut params, &grads, &mut adam, 1e-2);
//! let snapshot = WeightSnapshot { version: 1, params: Arc::new(params) };
//! let mut set = compile_kernel_set(device, snapshot)?;
//! let after = forward_loss(device, clock, &mut set, &mut buf, tokens, targets, host)?;
//! assert!(after < loss, "{after} after one update, {loss} before");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
pub use host::IGNORED_TARGET;
pub use params::{LayerTensor, ParamLayout, Params, TensorSpec};

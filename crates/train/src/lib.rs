//! Training: the loop and the weight-delivery strategies, data sets, tokenizers, checkpoints,
//! metrics, reports and sampling.
//!
//! The fourth layer (mil → device → model → train → cli). It owns the training loop
//! ([`trainer::train`]: micro-steps, gradient accumulation, loss scaling, clipping, AdamW and
//! the schedule, validation, checkpoints), how new weights reach the device after each update
//! ([`delivery`]: recompile, double buffer, weights as inputs), the data ([`data`]: token files,
//! the train/validation split, the window sampler, the [`embedded_corpus`]), the tokenizers
//! ([`tokenizer`]) and the checkpoint format ([`checkpoint`]). [`run`] is what the command
//! line's `train` builds around the loop: the run folder, the metrics log and the efficiency
//! report.
//!
//! # Train a very small model for a few steps
//!
//! The loop reads its windows from a [`trainer::WindowSource`]; a run on real text uses
//! [`data::TrainingWindows`] (see `examples/train_tiny.rs` at the repository root). Here the
//! windows come from memory: every window counts up by one modulo the vocabulary, which the
//! model starts to learn within a few updates.
//!
//! ```
//! use anetrain_device::{DeviceSpec, NumericMode};
//! use anetrain_model::init::init_params;
//! use anetrain_model::{ModelConfig, ParamLayout};
//! use anetrain_train::delivery::Strategy;
//! use anetrain_train::trainer::{
//!     train, DeliverySettings, Event, TrainOptions, TrainOutcome, TrainSetup, TrainState,
//!     ValidationSource, WindowSource,
//! };
//! use std::sync::Arc;
//!
//! /// Window n is n, n + 1, n + 2, ... modulo 16.
//! struct Counting(u32);
//!
//! impl ValidationSource for Counting {
//!     fn validation_window(&self, i: usize, out: &mut [u32]) {
//!         for (j, t) in out.iter_mut().enumerate() {
//!             *t = (i + j) as u32 % 16;
//!         }
//!     }
//!     fn validation_window_count(&self) -> usize {
//!         4
//!     }
//! }
//!
//! impl WindowSource for Counting {
//!     fn next_train_window(&mut self, out: &mut [u32]) {
//!         for (j, t) in out.iter_mut().enumerate() {
//!             *t = (self.0 + j as u32) % 16;
//!         }
//!         self.0 += 1;
//!     }
//!     fn state(&self) -> serde_json::Value {
//!         self.0.into() // what a checkpoint keeps to continue the data where it stopped
//!     }
//! }
//!
//! let config = ModelConfig {
//!     name: "toy".into(),
//!     dim: 16,
//!     hidden: 32,
//!     n_layers: 1,
//!     n_heads: 2,
//!     n_kv_heads: 2,
//!     head_dim: 8,
//!     vocab: 16,
//!     seq_len: 8,
//!     ..ModelConfig::tiny()
//! };
//! let options = TrainOptions {
//!     steps: 16,
//!     lr: 3e-2,
//!     warmup: 2,
//!     eval_every: 16, // validate once, at the end
//!     eval_windows: 4,
//!     threads: 1,
//!     ..TrainOptions::default()
//! };
//! let open = DeviceSpec { threads: Some(1), ..DeviceSpec::cpu(NumericMode::Fp32) }.open()?;
//! let params = init_params(Arc::new(ParamLayout::new(&config)), options.seed);
//! let mut state = TrainState::new(params, &options, open.mode);
//! // The double buffer: the next weights compile in the background while the current evaluate.
//! let setup = TrainSetup {
//!     device: &*open.device,
//!     clock: &*open.clock,
//!     delivery: DeliverySettings::new(Strategy::DoubleBuffer),
//!     simulate_host_time: false,
//!     stop_after: None,
//!     halt: None,
//! };
//!
//! let (mut losses, mut val_loss) = (Vec::new(), None);
//! let outcome = train(&setup, &options, &mut state, &mut Counting(0), None, &mut |event| {
//!     match event {
//!         Event::Step(record) => losses.push(record.loss),
//!         Event::Validation { loss, .. } => val_loss = Some(*loss),
//!         _ => {}
//!     }
//! })?;
//!
//! assert_eq!(outcome, TrainOutcome::Finished);
//! assert_eq!(state.step, 16);
//! assert_eq!(losses.len(), 16);
//! assert!(losses.iter().all(|l| l.is_finite()));
//! // It starts near ln(16) = 2.77, the loss of a uniform guess, and learns from there.
//! assert!((losses[0] - 16f32.ln()).abs() < 0.1, "{losses:?}");
//! let val_loss = val_loss.expect("a validation at the last step");
//! assert!(val_loss < losses[0] - 0.5, "validation {val_loss}, first step {}", losses[0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod delivery;
pub mod priority;
pub mod run;
pub mod tokenizer;
pub mod trainer;

pub use data::embedded_corpus;

//! The probe suite and the peak-throughput sweep, built on the `Device` trait and the `Clock`
//! alone, so that they run on any device, and on a latency model in virtual time where their
//! figures are exact.
//!
//! It sits beside the trainer, on top of the device layer (mil → device → probe → cli), and
//! measures the facts the double-buffered trainer rests on: what a compile and an eval cost,
//! and whether a compile on one thread runs in parallel with evals on another.
//!
//! - [`probe::run_probe`]: eval throughput, ping-pong between two kernels, sequential
//!   compiles, compile on a background thread against evals on the foreground, and how many
//!   kernels the device holds at once.
//! - [`peak::run_peak`]: chains of 1×1 convs, ms/eval and TFLOPS against the device's peak.
//!
//! Every kernel either runs is checked against an output known in advance ([`kernels`]); a
//! failed compile, a failed eval or a wrong result ends the run with a [`ProbeError`].
//!
//! # The probe on a simulated M4
//!
//! The CPU device computes, and a latency model charges the M4's compile and eval times on a
//! virtual clock (what `DeviceSpec { simulate: Some("m4".into()), .. }` opens). Every figure
//! is then known in advance:
//!
//! ```
//! use anetrain_device::clock::{Clock, SimClock};
//! use anetrain_device::decorate::{ChipProfile, LatencyModel};
//! use anetrain_device::{CpuDevice, NumericMode};
//! use anetrain_probe::{run_probe, OverlapVerdict, ProbeConfig, Testbed};
//! use std::sync::Arc;
//!
//! let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
//! let cpu = CpuDevice::new(NumericMode::Fp32).with_threads(1);
//! let m4 = LatencyModel::new(cpu, ChipProfile::m4(), clock.clone());
//! let bed = Testbed::new(Arc::new(m4), clock);
//!
//! // A 16-channel 1×1 conv at spatial size 8, and fewer repetitions than the defaults.
//! let config = ProbeConfig {
//!     channels: 16,
//!     spatial: 8,
//!     warmup_evals: 2,
//!     evals: 50,
//!     pairs: 20,
//!     compiles: 4,
//!     max_loaded: 8,
//!     ..ProbeConfig::default()
//! };
//! let report = run_probe(&bed, &config)?;
//!
//! let profile = ChipProfile::m4();
//! assert!(report.simulated);
//! assert_eq!(report.eval_time(), profile.eval_time(2 * 16 * 16 * 8)); // FLOPs of one eval
//! assert_eq!(report.compile_time(), profile.compile_time(16 * 16)); // weights baked in
//! // A compile costs about 130 evals, and it overlaps the evals of another kernel.
//! assert!((130.0..135.0).contains(&report.compile_to_eval()), "{}", report.compile_to_eval());
//! assert_eq!(report.background_overlap.verdict, OverlapVerdict::Overlapped);
//! assert_eq!(report.loaded_at_once.loaded, 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod kernels;
pub mod peak;
pub mod probe;
pub mod report;
pub mod stats;
pub mod testbed;

pub use error::ProbeError;
pub use peak::{run_peak, ChainShape, PeakConfig, PeakReport, PeakRow};
pub use probe::{run_probe, OverlapVerdict, ProbeConfig, ProbeReport};
pub use testbed::Testbed;

//! The probe suite and the peak-throughput sweep, built on the `Device` trait and the `Clock`
//! alone, so that they run on any device, and on a latency model in virtual time where their
//! figures are exact.
//!
//! - [`probe::run_probe`]: eval throughput, ping-pong between two kernels, sequential
//!   compiles, compile on a background thread against evals on the foreground, and how many
//!   kernels the device holds at once.
//! - [`peak::run_peak`]: chains of 1×1 convs, ms/eval and TFLOPS against the device's peak.
//!
//! Every kernel either runs is checked against an output known in advance ([`kernels`]); a
//! failed compile, a failed eval or a wrong result ends the run with a [`ProbeError`].

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

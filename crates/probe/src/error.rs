//! How a probe or a sweep fails: which stage, which kernel, and what went wrong.

use crate::kernels::Mismatch;
use anetrain_device::DeviceError;
use std::time::Duration;
use thiserror::Error;

/// The device's error and the mismatch are boxed: they are large, and errors travel up
/// through every `Result` of a run.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("{stage}: invalid settings: {message}")]
    Settings {
        stage: &'static str,
        message: String,
    },
    #[error("{stage}: compiling {kernel} failed: {error}")]
    Compile {
        stage: &'static str,
        kernel: String,
        error: Box<DeviceError>,
    },
    #[error("{stage}: evaluating {kernel} failed: {error}")]
    Eval {
        stage: &'static str,
        kernel: String,
        error: Box<DeviceError>,
    },
    #[error("{stage}: {kernel} computed a wrong result: {mismatch}")]
    WrongResult {
        stage: &'static str,
        kernel: String,
        mismatch: Box<Mismatch>,
    },
    #[error("{stage}: the background compile had not finished after {waited:?} by the clock")]
    BackgroundTimeout {
        stage: &'static str,
        waited: Duration,
    },
    #[error("{stage}: the background compile thread stopped without a result")]
    BackgroundLost { stage: &'static str },
}

impl ProbeError {
    /// The stage that failed, e.g. `test 3 (sequential compile)`.
    pub fn stage(&self) -> &'static str {
        match self {
            ProbeError::Settings { stage, .. }
            | ProbeError::Compile { stage, .. }
            | ProbeError::Eval { stage, .. }
            | ProbeError::WrongResult { stage, .. }
            | ProbeError::BackgroundTimeout { stage, .. }
            | ProbeError::BackgroundLost { stage } => stage,
        }
    }
}

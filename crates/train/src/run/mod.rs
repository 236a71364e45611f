//! A training run as a user starts it: its folder, its metrics log, the settings its
//! checkpoints keep, its efficiency report, its plot and timeline, and the restart of its
//! process when the compile budget is spent. The trainer ([`crate::trainer`]) runs the steps;
//! this layer keeps what a run leaves on disk.

pub mod data;
pub mod folder;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod restart;
pub mod settings;
pub mod start;
pub mod trace;

pub use folder::{EarlierRun, FolderError, RunFolder};
pub use metrics::{LossCurves, MetricsError, MetricsLog, MetricsRow};
pub use report::EfficiencyReport;
pub use settings::RunSettings;
pub use start::{OptionFlags, OptionsFile, ResumeFrom, Run, RunSpec};

use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use crate::tokenizer::TokenizerError;
use crate::trainer::TrainError;
use anetrain_device::OpenError;
use anetrain_model::config::ConfigError;
use anetrain_model::io::ModelFileError;
use std::path::PathBuf;

/// Why a run could not start, train or finish; each names what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Device(#[from] OpenError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// The run's records could not be written: it stopped, and names its newest checkpoint.
    #[error(
        "{error}; the run stopped after update {step}{}: make room, then continue it with --resume",
        checkpoint.as_ref().map_or(String::new(), |p| format!(", its newest checkpoint {}", p.display()))
    )]
    RecordsLost {
        error: Box<MetricsError>,
        step: u64,
        checkpoint: Option<PathBuf>,
    },
}

//! A training run as a user starts it: its folder, its metrics log, the settings its
//! checkpoints keep, its efficiency report, its plot and timeline, and the restart of its
//! process when the compile budget is spent. The trainer ([`crate::trainer`]) runs the steps;
//! this layer keeps what a run leaves on disk.

pub mod folder;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod restart;
pub mod settings;
pub mod trace;

pub use folder::{EarlierRun, FolderError, RunFolder};
pub use metrics::{LossCurves, MetricsError, MetricsLog, MetricsRow};
pub use report::EfficiencyReport;
pub use settings::RunSettings;

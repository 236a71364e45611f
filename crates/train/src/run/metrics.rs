//! `metrics.jsonl`: one JSON object a line, one row type for writing and reading it back.

use crate::trainer::{Event, StepRecord};
use anetrain_model::io::atomic::write_atomic;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A line of `metrics.jsonl`, told apart by its `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetricsRow {
    /// One optimizer update.
    Step(StepRecord),
    /// A validation loss, and the weights version it evaluated.
    Val {
        step: u64,
        val_loss: f32,
        weights_version: u64,
    },
    /// A kernel set compiled (by the strategy's compile, not a background one).
    Compile {
        kernels: usize,
        ms: f64,
    },
    /// A background compile failed; the active kernels stayed.
    CompileFailed {
        message: String,
    },
    Checkpoint {
        step: u64,
        path: String,
    },
    /// Layers `first_layer..end_layer` swapped in on weights version `version`, before update
    /// `step`.
    GroupSwap {
        step: u64,
        first_layer: usize,
        end_layer: usize,
        version: u64,
    },
}

impl MetricsRow {
    /// The row an event of the trainer writes, if it writes one (host work is for timelines).
    pub fn of(event: &Event) -> Option<MetricsRow> {
        Some(match event {
            Event::Step(record) => MetricsRow::Step(record.clone()),
            Event::Validation {
                step,
                loss,
                weights_version,
            } => MetricsRow::Val {
                step: *step,
                val_loss: *loss,
                weights_version: *weights_version,
            },
            Event::Compiled { kernels, took } => MetricsRow::Compile {
                kernels: *kernels,
                ms: took.as_secs_f64() * 1e3,
            },
            Event::CompileFailed(message) => MetricsRow::CompileFailed {
                message: message.clone(),
            },
            Event::Checkpoint { step, path } => MetricsRow::Checkpoint {
                step: *step,
                path: path.display().to_string(),
            },
            Event::GroupSwap {
                step,
                layers,
                version,
            } => MetricsRow::GroupSwap {
                step: *step,
                first_layer: layers.start,
                end_layer: layers.end,
                version: *version,
            },
            Event::HostWork { .. } => return None,
        })
    }

    /// The update the row belongs to, where it names one.
    pub fn step(&self) -> Option<u64> {
        match self {
            MetricsRow::Step(r) => Some(r.step),
            MetricsRow::Val { step, .. }
            | MetricsRow::Checkpoint { step, .. }
            | MetricsRow::GroupSwap { step, .. } => Some(*step),
            MetricsRow::Compile { .. } | MetricsRow::CompileFailed { .. } => None,
        }
    }
}

/// (step, loss) points of a curve.
pub type Curve = Vec<(u64, f32)>;

/// The training and validation losses of a run, for its plot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossCurves {
    pub train: Curve,
    pub val: Curve,
}

impl LossCurves {
    /// Adds the row's loss to its curve, if it carries one.
    pub fn add(&mut self, row: &MetricsRow) {
        match row {
            MetricsRow::Step(r) => self.train.push((r.step, r.loss)),
            MetricsRow::Val { step, val_loss, .. } => self.val.push((*step, *val_loss)),
            _ => {}
        }
    }
}

/// A run's `metrics.jsonl`, open for appending. The losses written so far (this process's
/// and, for a resumed run, the earlier ones') are kept for the plot. A write that fails is
/// kept to be reported by [`MetricsLog::finish`].
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    curves: LossCurves,
    write_error: Option<io::Error>,
}

/// Why `metrics.jsonl` could not be read, cut or written.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct MetricsError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl MetricsLog {
    /// Opens (or creates) the log of a new run.
    pub fn create(path: &Path) -> Result<MetricsLog, MetricsError> {
        MetricsLog::open(path, LossCurves::default())
    }

    /// Opens the log of a run resumed at update `step`, keeping every row up to the first of
    /// a later update. The later rows were written by a process that stopped after its last
    /// checkpoint, and the resumed run computes their steps again, so they are cut
    /// (atomically; a line torn by a crash goes with them).
    pub fn resume(path: &Path, step: u64) -> Result<MetricsLog, MetricsError> {
        let error = |action| {
            move |source| MetricsError {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        // Bytes, not text: a crash can tear a line inside a character.
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(error("cannot read")(e)),
        };
        let mut curves = LossCurves::default();
        let mut kept = 0;
        for line in text.split_inclusive(|&b| b == b'\n') {
            let Ok(row) = serde_json::from_slice::<MetricsRow>(line) else {
                break;
            };
            if row.step().is_some_and(|s| s > step) {
                break;
            }
            curves.add(&row);
            kept += line.len();
        }
        if kept < text.len() {
            write_atomic(path, &text[..kept]).map_err(error("cannot rewrite"))?;
        }
        MetricsLog::open(path, curves)
    }

    fn open(path: &Path, curves: LossCurves) -> Result<MetricsLog, MetricsError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| MetricsError {
                action: "cannot open",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
            curves,
            write_error: None,
        })
    }

    /// Appends a row.
    pub fn append(&mut self, row: &MetricsRow) {
        self.curves.add(row);
        let line = serde_json::to_string(row).map_err(io::Error::other);
        let written = line.and_then(|line| writeln!(self.file, "{line}"));
        if let Err(e) = written {
            self.write_error.get_or_insert(e);
        }
    }

    /// Whether a write has failed.
    pub fn failed(&self) -> bool {
        self.write_error.is_some()
    }

    /// The losses of the whole run so far.
    pub fn curves(&self) -> &LossCurves {
        &self.curves
    }

    /// The first write that failed, if one did.
    pub fn finish(&mut self) -> Result<(), MetricsError> {
        match self.write_error.take() {
            None => Ok(()),
            Some(source) => Err(MetricsError {
                action: "writing",
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn step(step: u64, loss: f32) -> MetricsRow {
        MetricsRow::Step(StepRecord {
            step,
            loss,
            lr: 1e-3,
            grad_norm: 0.5,
            loss_scale: 1.0,
            skipped: false,
            tokens_per_s: 1000.0,
            ms: 12.5,
            start_s: 0.25,
            weights_version: step - 1,
            staleness: 1,
            eval_ms: 8.0,
            host_ms: 3.0,
            optimizer_ms: 1.0,
            stall_ms: 0.5,
            eval_ms_by_kernel: [("fwd_attn".to_string(), 2.0)].into_iter().collect(),
        })
    }

    fn val(step: u64, val_loss: f32) -> MetricsRow {
        MetricsRow::Val {
            step,
            val_loss,
            weights_version: step,
        }
    }

    #[test]
    fn every_row_reads_back_as_written_and_keeps_its_type_name() {
        let rows = [
            step(3, 2.5),
            val(3, 2.75),
            MetricsRow::Compile {
                kernels: 20,
                ms: 1.5,
            },
            MetricsRow::CompileFailed {
                message: "compile failed: x".into(),
            },
            MetricsRow::Checkpoint {
                step: 3,
                path: "runs/a/ckpt-00000003.bin".into(),
            },
        ];
        for (row, kind) in
            rows.iter()
                .zip(["step", "val", "compile", "compile_failed", "checkpoint"])
        {
            let line = serde_json::to_string(row).unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["type"], kind, "{line}");
            assert_eq!(&serde_json::from_str::<MetricsRow>(&line).unwrap(), row);
        }
        // A step row of an older build, without the time split, still reads.
        let old = r#"{"type":"step","step":1,"loss":5.0,"lr":0.001,"grad_norm":1.0,"loss_scale":1.0,"skipped":false,"tokens_per_s":10.0,"ms":3.0,"start_s":0.0,"weights_version":0,"staleness":0}"#;
        assert!(matches!(
            serde_json::from_str::<MetricsRow>(old).unwrap(),
            MetricsRow::Step(StepRecord { step: 1, .. })
        ));
    }

    #[test]
    fn events_become_rows_and_host_work_does_not() {
        let event = Event::Compiled {
            kernels: 6,
            took: Duration::from_micros(2500),
        };
        assert_eq!(
            MetricsRow::of(&event),
            Some(MetricsRow::Compile {
                kernels: 6,
                ms: 2.5
            })
        );
        let host = Event::HostWork {
            name: "optimizer",
            start: Duration::ZERO,
            end: Duration::from_millis(1),
        };
        assert_eq!(MetricsRow::of(&host), None);
    }

    /// A run resumed at step 2 keeps the rows up to step 2 (and the rows without a step
    /// among them), cuts the later ones and a torn last line, and plots what it kept.
    #[test]
    fn a_resumed_log_cuts_the_steps_computed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&path).unwrap();
        for row in [
            step(1, 4.0),
            MetricsRow::Compile {
                kernels: 6,
                ms: 1.0,
            },
            step(2, 3.5),
            val(2, 3.75),
            step(3, 3.25),
        ] {
            log.append(&row);
        }
        log.finish().unwrap();
        drop(log);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice("{\"type\":\"step\",\"step\":4,\"lo\u{e9}".as_bytes());
        text.truncate(text.len() - 1); // torn inside a character
        std::fs::write(&path, &text).unwrap();

        let log = MetricsLog::resume(&path, 2).unwrap();
        assert_eq!(log.curves().train, vec![(1, 4.0), (2, 3.5)]);
        assert_eq!(log.curves().val, vec![(2, 3.75)]);
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept.lines().count(), 4);
        assert!(kept.ends_with('\n'));
        drop(log);
        // Resumed where the log ends, nothing is cut; a missing log starts empty.
        let log = MetricsLog::resume(&path, 9).unwrap();
        assert_eq!(log.curves().train.len(), 2);
        let missing = MetricsLog::resume(&dir.path().join("none.jsonl"), 3).unwrap();
        assert_eq!(missing.curves(), &LossCurves::default());
    }
}

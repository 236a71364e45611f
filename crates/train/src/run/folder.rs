//! The run folder: one run's checkpoints, metrics, plot, report (and trace), and the policy
//! that keeps two runs from sharing one.

use crate::checkpoint::list_checkpoints;
use anetrain_model::io::atomic::TEMP_PREFIX;
use std::io;
use std::path::{Path, PathBuf};

/// The files a run folder holds.
pub const METRICS: &str = "metrics.jsonl";
pub const LOSS_PLOT: &str = "loss.svg";
pub const REPORT: &str = "report.txt";
/// The efficiency report's figures.
pub const REPORT_JSON: &str = "report.json";

/// A run's folder (`--out`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFolder {
    path: PathBuf,
}

/// Why a run cannot start in its folder.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("--resume: no checkpoint in {}{}", .0.display(), if *.1 {
        ": the run there stopped before its first checkpoint; start it over with --overwrite"
    } else {
        ""
    })]
    NoCheckpoint(PathBuf, bool),
    #[error("--overwrite would delete the run that --resume continues")]
    OverwriteWhileContinuing,
    #[error(
        "{} holds a run already ({files} file(s){}), or choose another --out",
        folder.display(),
        match newest {
            Some(step) => format!(
                ", its newest checkpoint at step {step}): continue it with --resume, start over \
                 with --overwrite (deletes them"
            ),
            None => ", no checkpoint: it stopped before its first): start over with \
                     --overwrite (deletes them"
                .to_string(),
        }
    )]
    HoldsARun {
        folder: PathBuf,
        files: usize,
        newest: Option<u64>,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What a new run found in its folder and will delete once everything else checks out
/// (`--overwrite`).
#[derive(Debug, Default)]
pub struct EarlierRun {
    files: Vec<PathBuf>,
}

impl EarlierRun {
    /// Deletes the earlier run's files.
    pub fn delete(self) -> Result<(), FolderError> {
        for file in self.files {
            std::fs::remove_file(&file).map_err(|source| FolderError::Io {
                action: "--overwrite: cannot delete",
                path: file.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl RunFolder {
    pub fn new(path: impl Into<PathBuf>) -> RunFolder {
        RunFolder { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The newest checkpoint in the folder, for `--resume` without a file.
    pub fn newest_checkpoint(&self) -> Result<PathBuf, FolderError> {
        list_checkpoints(&self.path)
            .pop()
            .map(|(_, p)| p)
            .ok_or_else(|| {
                FolderError::NoCheckpoint(self.path.clone(), !self.run_files().is_empty())
            })
    }

    /// Whether `checkpoint` lies in this folder, so that resuming from it continues the run
    /// the folder holds.
    pub fn holds(&self, checkpoint: &Path) -> bool {
        let dir = match checkpoint.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match (dir.canonicalize(), self.path.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// The files a run left here (checkpoints, metrics, plot, report). An empty
    /// metrics.jsonl is what a run refused before its first compile leaves: not a run.
    pub fn run_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = list_checkpoints(&self.path)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        files.extend(
            [METRICS, LOSS_PLOT, REPORT, REPORT_JSON]
                .iter()
                .map(|name| self.file(name))
                .filter(|p| p.metadata().is_ok_and(|m| m.len() > 0)),
        );
        files
    }

    /// Checks that a run may start here. A run must not mix its files with another run's:
    /// checkpoint rotation would keep the other run's newer steps and delete this run's,
    /// `--resume` would pick the wrong run, and metrics.jsonl would hold both. Continuing the
    /// run the folder holds is the one exception; `overwrite` starts over, deleting the
    /// earlier run when [`EarlierRun::delete`] is called.
    pub fn claim(&self, continues: bool, overwrite: bool) -> Result<EarlierRun, FolderError> {
        if continues && overwrite {
            return Err(FolderError::OverwriteWhileContinuing);
        }
        if continues {
            return Ok(EarlierRun::default());
        }
        let files = self.run_files();
        if !files.is_empty() && !overwrite {
            return Err(FolderError::HoldsARun {
                folder: self.path.clone(),
                files: files.len(),
                newest: list_checkpoints(&self.path).pop().map(|(step, _)| step),
            });
        }
        Ok(EarlierRun { files })
    }

    /// Deletes what writes killed halfway left behind: the temporary files atomic writes
    /// rename into place (`.anetrain-tmp-*`), which nothing else would ever remove. Called
    /// once a run owns the folder.
    pub fn remove_leftovers(&self) -> Result<(), FolderError> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|source| FolderError::Io {
                    action: "cannot delete the leftover",
                    path,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Creates the folder if it does not exist.
    pub fn create(&self) -> Result<(), FolderError> {
        std::fs::create_dir_all(&self.path).map_err(|source| FolderError::Io {
            action: "cannot create",
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_folder_holding_a_run_is_refused_unless_continued_or_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let folder = RunFolder::new(dir.path());
        assert!(folder.claim(false, false).is_ok(), "an empty folder");
        // An empty metrics.jsonl is not a run.
        touch(&folder.file(METRICS), b"");
        assert!(folder.run_files().is_empty());
        touch(&folder.file(METRICS), b"{}\n");
        // A run that stopped before its first checkpoint: only starting over gets out, and
        // both refusals say so.
        let stopped = folder.claim(false, false).unwrap_err().to_string();
        assert!(
            stopped.contains("no checkpoint: it stopped before its first"),
            "{stopped}"
        );
        assert!(stopped.contains("start over with --overwrite"), "{stopped}");
        let resume = folder.newest_checkpoint().unwrap_err().to_string();
        assert!(
            resume.contains("stopped before its first checkpoint; start it over with --overwrite"),
            "{resume}"
        );
        touch(&folder.file("ckpt-00000010.bin"), b"x");
        touch(&folder.file("ckpt-00000020.bin"), b"x");
        touch(&folder.file("notes.txt"), b"mine");
        let err = folder.claim(false, false).unwrap_err();
        assert!(matches!(
            err,
            FolderError::HoldsARun {
                files: 3,
                newest: Some(20),
                ..
            }
        ));
        assert!(err.to_string().contains("its newest checkpoint at step 20"));
        assert!(folder.claim(true, false).is_ok(), "continuing the run");
        assert!(matches!(
            folder.claim(true, true),
            Err(FolderError::OverwriteWhileContinuing)
        ));
        let earlier = folder.claim(false, true).unwrap();
        assert!(
            folder.file(METRICS).exists(),
            "nothing deleted before delete()"
        );
        earlier.delete().unwrap();
        assert!(folder.run_files().is_empty());
        assert!(folder.file("notes.txt").exists(), "only the run's files go");
    }

    #[test]
    fn leftovers_of_killed_writes_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let folder = RunFolder::new(dir.path());
        // What a kill during an atomic write leaves: the temporary file it writes first.
        touch(
            &folder.file(&format!("{TEMP_PREFIX}Ab12Cd")),
            b"half a checkpoint",
        );
        touch(&folder.file("ckpt-00000004.bin"), b"x");
        touch(&folder.file("notes.txt"), b"mine");
        folder.remove_leftovers().unwrap();
        assert!(!folder.file(&format!("{TEMP_PREFIX}Ab12Cd")).exists());
        assert!(folder.file("ckpt-00000004.bin").exists());
        assert!(folder.file("notes.txt").exists());
        // A folder that does not exist yet has nothing left over.
        RunFolder::new(dir.path().join("new"))
            .remove_leftovers()
            .unwrap();
    }

    #[test]
    fn a_checkpoint_is_held_by_the_folder_it_lies_in() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let ckpt = a.join("ckpt-00000001.bin");
        assert!(RunFolder::new(&a).holds(&ckpt));
        assert!(RunFolder::new(a.join(".")).holds(&ckpt));
        assert!(!RunFolder::new(&b).holds(&ckpt));
        assert!(!RunFolder::new(dir.path().join("missing")).holds(&ckpt));
        assert!(matches!(
            RunFolder::new(&b).newest_checkpoint(),
            Err(FolderError::NoCheckpoint(_, false))
        ));
    }
}

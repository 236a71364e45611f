//! The per-model temp directories the compiler expects (spec 1.3 step 6), shared by identical
//! programs.
//!
//! The directory is named by the model's `hexStringIdentifier`, a hash of its MIL text and
//! weights, so two byte-identical programs map to one directory. The original deleted it when
//! either kernel was freed, pulling it from under the other; here each directory has a count of
//! the kernels using it and is removed when the last one goes.
//!
//! The count is per process. Two processes of one user compiling the same program still share
//! a directory unknowingly (the temp root is per user); that case is not handled.

use super::weights::WeightsDictionary;
use crate::DeviceError;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The directories under one root, with the number of kernels using each.
#[derive(Debug)]
pub struct ModelDirs {
    root: PathBuf,
    users: Mutex<HashMap<String, usize>>,
}

/// One kernel's use of a model directory; the directory is removed when the last lease on it
/// is dropped.
#[derive(Debug)]
pub struct ModelDirLease {
    dirs: Arc<ModelDirs>,
    id: String,
    path: PathBuf,
}

impl ModelDirs {
    /// Directories go under `root` (on a Mac, `NSTemporaryDirectory()`).
    pub fn new(root: impl Into<PathBuf>) -> Arc<ModelDirs> {
        Arc::new(ModelDirs {
            root: root.into(),
            users: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many kernels use the directory of model `id`.
    pub fn users(&self, id: &str) -> usize {
        self.lock().get(id).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // The map holds plain counts, valid whatever a panicking holder was doing.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a lease on the directory of model `id`, writing it first if no kernel uses it:
    /// `weights/`, `model.mil` and every weight file at its relative path. A later user of the
    /// same id finds the files in place: the id is a hash of exactly these contents.
    pub fn acquire(
        self: &Arc<Self>,
        id: &str,
        mil: &[u8],
        weights: &WeightsDictionary<'_>,
    ) -> Result<ModelDirLease, DeviceError> {
        check_identifier(id)?;
        let path = self.root.join(id);
        // The lock is held while writing, so that no other kernel removes the directory
        // half-way, or reads it before it is complete.
        let mut users = self.lock();
        let count = users.get(id).copied().unwrap_or(0);
        if count == 0 {
            if let Err(e) = write_model_dir(&path, mil, weights) {
                // Whatever was written half-way is useless; a failure to remove it changes
                // nothing for the caller, who gets the write error.
                let _ = std::fs::remove_dir_all(&path);
                return Err(DeviceError::CompileFailed(format!(
                    "cannot prepare the model directory {}: {e}",
                    path.display()
                )));
            }
        }
        users.insert(id.to_string(), count + 1);
        Ok(ModelDirLease {
            dirs: Arc::clone(self),
            id: id.to_string(),
            path,
        })
    }

    fn release(&self, id: &str, path: &Path) {
        let mut users = self.lock();
        let Some(count) = users.get_mut(id) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            users.remove(id);
            // Nothing can be reported from a drop; a directory left behind only costs disk
            // space in the temp dir, which the system cleans.
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

impl ModelDirLease {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for ModelDirLease {
    fn drop(&mut self) {
        self.dirs.release(&self.id, &self.path);
    }
}

/// The identifier becomes a directory name: it must be one plain path component.
fn check_identifier(id: &str) -> Result<(), DeviceError> {
    let plain = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        Ok(())
    } else {
        Err(DeviceError::CompileFailed(format!(
            "the compiler's model identifier `{id}` is not a plain directory name"
        )))
    }
}

/// Writes the directory as the original does: `weights/` (always), `model.mil`, and each weight
/// file under its relative path. Files are written atomically, so that a crash never leaves a
/// truncated file the next run would reuse.
fn write_model_dir(dir: &Path, mil: &[u8], weights: &WeightsDictionary<'_>) -> io::Result<()> {
    std::fs::create_dir_all(dir.join("weights"))?;
    write_atomic(&dir.join("model.mil"), mil)?;
    for entry in &weights.entries {
        let path = dir.join(entry.relative_path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_atomic(&path, entry.data)?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ane::weights::WeightEntry;

    fn temp_root() -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "anetrain-model-dirs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    fn two_weights<'a>(wq: &'a [u8], mask: &'a [u8]) -> WeightsDictionary<'a> {
        WeightsDictionary {
            entries: vec![
                WeightEntry {
                    key: "@model_path/weights/wq.bin",
                    offset: 0,
                    data: wq,
                    relative_path: "weights/wq.bin",
                },
                WeightEntry {
                    key: "@model_path/consts/mask.bin",
                    offset: 0,
                    data: mask,
                    relative_path: "consts/mask.bin",
                },
            ],
        }
    }

    #[test]
    fn the_directory_is_laid_out_as_the_compiler_expects() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"wq bytes", b"mask bytes");
        let lease = dirs
            .acquire("A1B2_c3", b"program(1.3)\n", &weights)
            .unwrap();
        let dir = root.join("A1B2_c3");
        assert_eq!(lease.path(), dir);
        assert_eq!(
            std::fs::read(dir.join("model.mil")).unwrap(),
            b"program(1.3)\n"
        );
        assert_eq!(
            std::fs::read(dir.join("weights/wq.bin")).unwrap(),
            b"wq bytes"
        );
        assert_eq!(
            std::fs::read(dir.join("consts/mask.bin")).unwrap(),
            b"mask bytes"
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["consts", "model.mil", "weights"],
            "no temp files left"
        );
        drop(lease);
        assert!(!dir.exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn weights_dir_exists_even_without_weights() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let lease = dirs
            .acquire("abc", b"mil", &WeightsDictionary::default())
            .unwrap();
        assert!(lease.path().join("weights").is_dir());
        drop(lease);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn freeing_one_of_two_identical_kernels_keeps_the_files() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        let first = dirs.acquire("same", b"mil", &weights).unwrap();
        let second = dirs.acquire("same", b"mil", &weights).unwrap();
        let other = dirs.acquire("other", b"mil", &weights).unwrap();
        assert_eq!(dirs.users("same"), 2);
        drop(first);
        assert_eq!(dirs.users("same"), 1);
        assert!(root.join("same/weights/wq.bin").is_file());
        drop(second);
        assert_eq!(dirs.users("same"), 0);
        assert!(!root.join("same").exists());
        assert!(
            root.join("other/model.mil").is_file(),
            "other models untouched"
        );
        drop(other);
        assert!(!root.join("other").exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_directory_is_rewritten_after_its_last_user_left() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        drop(
            dirs.acquire("m", b"first", &WeightsDictionary::default())
                .unwrap(),
        );
        let lease = dirs
            .acquire("m", b"second", &WeightsDictionary::default())
            .unwrap();
        assert_eq!(
            std::fs::read(lease.path().join("model.mil")).unwrap(),
            b"second"
        );
        drop(lease);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn identifiers_that_are_not_plain_names_are_refused() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            let err = dirs
                .acquire(bad, b"mil", &WeightsDictionary::default())
                .expect_err(bad);
            assert!(matches!(err, DeviceError::CompileFailed(_)));
            assert_eq!(dirs.users(bad), 0);
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_write_failure_is_reported_and_leaves_no_user() {
        let root = temp_root();
        // A file where the directory should go makes every write fail.
        std::fs::write(root.join("blocked"), b"not a directory").unwrap();
        let dirs = ModelDirs::new(&root);
        let err = dirs
            .acquire("blocked", b"mil", &WeightsDictionary::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot prepare the model directory"),
            "{err}"
        );
        assert_eq!(dirs.users("blocked"), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_users_of_one_model_never_lose_its_files() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let lease = dirs.acquire("shared", b"mil", &weights).unwrap();
                        assert!(lease.path().join("weights/wq.bin").is_file());
                        assert!(lease.path().join("model.mil").is_file());
                    }
                });
            }
        });
        assert_eq!(dirs.users("shared"), 0);
        assert!(!root.join("shared").exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}

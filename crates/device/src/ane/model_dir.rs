//! The per-model temp directories the compiler reads (spec 1.3 step 6).
//!
//! The directory is named by the model's `hexStringIdentifier`, a hash of its MIL text and
//! weights, so two byte-identical programs map to one directory, and the framework's own
//! `unloadWithQoS:` deletes that directory (ane-constraints section 3). So the files are written
//! again before every compile, and the compile and load of a model, every unload of a model of
//! the same identifier and the removal of its directory take turns: nothing deletes the files
//! while a compile reads them. A directory per kernel would be simpler, but its name is the
//! framework's hash of the program, not ours to choose.
//!
//! Each directory also has a count of the kernels loaded from it and is removed when the last
//! one goes (the framework's delete is not documented behaviour to rely on).
//!
//! The turns are per process. Two processes of one user compiling the same program still share
//! a directory unknowingly (the temp root is per user); that case is not handled.

use super::weights::WeightsDictionary;
use crate::DeviceError;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The directories under one root, with the state of each model's.
#[derive(Debug)]
pub struct ModelDirs {
    root: PathBuf,
    states: Mutex<HashMap<String, DirState>>,
    /// Signalled whenever a model's turn ends.
    turn_ended: Condvar,
}

#[derive(Debug, Default)]
struct DirState {
    /// Kernels loaded from the directory.
    users: usize,
    /// A compile, an unload or a release of this model is running.
    busy: bool,
}

/// A compile of one model in progress: its files are written, and until this is turned into a
/// lease or dropped, no other compile, unload or removal of the same model runs. Dropped
/// without a lease (the compile or load failed), it removes the directory unless a kernel uses
/// it.
#[derive(Debug)]
pub struct CompilingDir {
    dirs: Arc<ModelDirs>,
    id: String,
    path: PathBuf,
    leased: bool,
}

/// One loaded kernel's use of a model directory; the directory is removed when the last lease
/// on it is dropped.
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
            states: Mutex::new(HashMap::new()),
            turn_ended: Condvar::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many loaded kernels use the directory of model `id`.
    pub fn users(&self, id: &str) -> usize {
        self.lock().get(id).map_or(0, |s| s.users)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, DirState>> {
        // The map holds plain counts and flags, valid whatever a panicking holder was doing.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no one else has the turn on model `id`, then takes it.
    fn begin_turn(&self, id: &str) {
        let mut states = self.lock();
        while states.get(id).is_some_and(|s| s.busy) {
            states = self
                .turn_ended
                .wait(states)
                .unwrap_or_else(|p| p.into_inner());
        }
        states.entry(id.to_string()).or_default().busy = true;
    }

    /// Ends the turn on model `id`, with `users_change` kernels more (or fewer) using its
    /// directory; removes the directory when none is left.
    fn end_turn(&self, id: &str, path: &Path, users_change: isize) {
        let mut states = self.lock();
        let state = states.entry(id.to_string()).or_default();
        state.users = state.users.saturating_add_signed(users_change);
        state.busy = false;
        if state.users == 0 {
            states.remove(id);
            // Removed under the lock, so that no new turn writes the files meanwhile. Nothing
            // can be reported from here (a drop); a directory left behind only costs disk
            // space in the temp dir, which the system cleans.
            let _ = std::fs::remove_dir_all(path);
        }
        drop(states);
        self.turn_ended.notify_all();
    }

    /// Takes the turn on model `id` (waiting for a compile or unload of the same model to
    /// finish) and writes its directory: `weights/`, `model.mil` and every weight file at its
    /// relative path. Written on every compile, since an unload of an identical kernel deletes
    /// them. Compile and load while the returned value is held.
    pub fn begin_compile(
        self: &Arc<Self>,
        id: &str,
        mil: &[u8],
        weights: &WeightsDictionary<'_>,
    ) -> Result<CompilingDir, DeviceError> {
        check_identifier(id)?;
        self.begin_turn(id);
        let compiling = CompilingDir {
            dirs: Arc::clone(self),
            id: id.to_string(),
            path: self.root.join(id),
            leased: false,
        };
        // Written outside the map's lock: the turn keeps this model's unloads away, and other
        // models need not wait for the write. On failure, dropping `compiling` ends the turn
        // and removes what was written half-way unless a kernel uses the directory.
        write_model_dir(&compiling.path, mil, weights).map_err(|e| {
            DeviceError::CompileFailed(format!(
                "cannot prepare the model directory {}: {e}",
                compiling.path.display()
            ))
        })?;
        Ok(compiling)
    }
}

impl CompilingDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The compile and load succeeded: the kernel uses the directory until the lease is
    /// dropped, and the turn ends.
    pub fn into_lease(mut self) -> ModelDirLease {
        self.dirs.end_turn(&self.id, &self.path, 1);
        self.leased = true;
        ModelDirLease {
            dirs: Arc::clone(&self.dirs),
            id: std::mem::take(&mut self.id),
            path: std::mem::take(&mut self.path),
        }
    }
}

impl Drop for CompilingDir {
    fn drop(&mut self) {
        if !self.leased {
            self.dirs.end_turn(&self.id, &self.path, 0);
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

    /// Runs `unload` in a turn of this model: the framework's unload deletes the directory,
    /// which must not happen while another kernel of the same model compiles from it.
    pub fn unload_with<R>(&self, unload: impl FnOnce() -> R) -> R {
        /// Ends the turn even if `unload` panics, so that later compiles do not wait forever.
        struct Turn<'a>(&'a ModelDirLease);
        impl Drop for Turn<'_> {
            fn drop(&mut self) {
                self.0.dirs.end_turn(&self.0.id, &self.0.path, 0);
            }
        }
        self.dirs.begin_turn(&self.id);
        let _turn = Turn(self);
        unload()
    }
}

impl Drop for ModelDirLease {
    fn drop(&mut self) {
        self.dirs.begin_turn(&self.id);
        self.dirs.end_turn(&self.id, &self.path, -1);
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

    /// Compiles "successfully": the files as the compile finds them, and the lease.
    fn compile(
        dirs: &Arc<ModelDirs>,
        id: &str,
        mil: &[u8],
        weights: &WeightsDictionary<'_>,
    ) -> ModelDirLease {
        dirs.begin_compile(id, mil, weights).unwrap().into_lease()
    }

    /// What the framework's `unloadWithQoS:` does to the directory.
    fn framework_unload(lease: &ModelDirLease) {
        lease.unload_with(|| {
            let _ = std::fs::remove_dir_all(lease.path());
        });
    }

    #[test]
    fn the_directory_is_laid_out_as_the_compiler_expects() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"wq bytes", b"mask bytes");
        let compiling = dirs
            .begin_compile("A1B2_c3", b"program(1.3)\n", &weights)
            .unwrap();
        let dir = root.join("A1B2_c3");
        assert_eq!(compiling.path(), dir);
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
        let lease = compiling.into_lease();
        assert_eq!(lease.path(), dir);
        assert_eq!(dirs.users("A1B2_c3"), 1);
        drop(lease);
        assert!(!dir.exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn weights_dir_exists_even_without_weights() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let lease = compile(&dirs, "abc", b"mil", &WeightsDictionary::default());
        assert!(lease.path().join("weights").is_dir());
        drop(lease);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn freeing_one_of_two_identical_kernels_keeps_the_files() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        let first = compile(&dirs, "same", b"mil", &weights);
        let second = compile(&dirs, "same", b"mil", &weights);
        let other = compile(&dirs, "other", b"mil", &weights);
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
    fn a_compile_after_the_framework_deleted_a_shared_directory_finds_the_files() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        let first = compile(&dirs, "same", b"mil", &weights);
        let second = compile(&dirs, "same", b"mil", &weights);
        // The first kernel is freed: its unload deletes the directory the second also names.
        framework_unload(&first);
        drop(first);
        assert!(!root.join("same").exists());
        assert_eq!(dirs.users("same"), 1);
        let third = dirs.begin_compile("same", b"mil", &weights).unwrap();
        assert_eq!(
            std::fs::read(third.path().join("model.mil")).unwrap(),
            b"mil"
        );
        assert_eq!(
            std::fs::read(third.path().join("weights/wq.bin")).unwrap(),
            b"w"
        );
        assert!(third.path().join("consts/mask.bin").is_file());
        drop(third.into_lease());
        drop(second);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn every_compile_writes_the_files_again() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        let first = compile(&dirs, "m", b"mil", &weights);
        std::fs::remove_file(first.path().join("weights/wq.bin")).unwrap();
        std::fs::write(first.path().join("model.mil"), b"truncated").unwrap();
        let second = compile(&dirs, "m", b"mil", &weights);
        assert_eq!(
            std::fs::read(second.path().join("model.mil")).unwrap(),
            b"mil"
        );
        assert!(second.path().join("weights/wq.bin").is_file());
        drop((first, second));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_unload_or_release_waits_for_a_compile_of_the_same_model() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Duration;
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        let loaded = compile(&dirs, "same", b"mil", &weights);
        let compiling = dirs.begin_compile("same", b"mil", &weights).unwrap();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let releaser = s.spawn(|| {
                framework_unload(&loaded);
                drop(loaded);
                released.store(true, Ordering::SeqCst);
            });
            // Give the other thread ample time to delete the files, were it allowed to.
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                !released.load(Ordering::SeqCst),
                "the unload ran during the compile"
            );
            assert!(compiling.path().join("model.mil").is_file());
            assert!(compiling.path().join("weights/wq.bin").is_file());
            let lease = compiling.into_lease();
            releaser.join().unwrap();
            assert!(released.load(Ordering::SeqCst));
            assert_eq!(dirs.users("same"), 1, "the new kernel still counts");
            drop(lease);
        });
        assert_eq!(dirs.users("same"), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_compile_does_not_hold_up_other_models() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        let other = compile(&dirs, "other", b"mil", &weights);
        let compiling = dirs.begin_compile("this", b"mil", &weights).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                framework_unload(&other);
                drop(other);
            })
            .join()
            .unwrap();
        });
        assert_eq!(dirs.users("other"), 0);
        assert!(compiling.path().join("model.mil").is_file());
        drop(compiling);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_failed_compile_removes_the_directory_unless_a_kernel_uses_it() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        drop(dirs.begin_compile("m", b"mil", &weights).unwrap());
        assert!(!root.join("m").exists());
        assert_eq!(dirs.users("m"), 0);
        let loaded = compile(&dirs, "m", b"mil", &weights);
        drop(dirs.begin_compile("m", b"mil", &weights).unwrap());
        assert!(root.join("m/model.mil").is_file());
        assert_eq!(dirs.users("m"), 1);
        drop(loaded);
        assert!(!root.join("m").exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn identifiers_that_are_not_plain_names_are_refused() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            let err = dirs
                .begin_compile(bad, b"mil", &WeightsDictionary::default())
                .expect_err(bad);
            assert!(matches!(err, DeviceError::CompileFailed(_)));
            assert_eq!(dirs.users(bad), 0);
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_write_failure_is_reported_and_ends_the_turn() {
        let root = temp_root();
        // A file where the directory should go makes every write fail.
        std::fs::write(root.join("blocked"), b"not a directory").unwrap();
        let dirs = ModelDirs::new(&root);
        let err = dirs
            .begin_compile("blocked", b"mil", &WeightsDictionary::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot prepare the model directory"),
            "{err}"
        );
        assert_eq!(dirs.users("blocked"), 0);
        // The turn ended: the next compile of the model proceeds (it would wait forever).
        std::fs::remove_file(root.join("blocked")).unwrap();
        let lease = compile(&dirs, "blocked", b"mil", &WeightsDictionary::default());
        assert!(lease.path().join("model.mil").is_file());
        drop(lease);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_kernels_of_one_model_always_compile_from_complete_files() {
        let root = temp_root();
        let dirs = ModelDirs::new(&root);
        let weights = two_weights(b"w", b"m");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let compiling = dirs.begin_compile("shared", b"mil", &weights).unwrap();
                        assert!(compiling.path().join("weights/wq.bin").is_file());
                        assert!(compiling.path().join("consts/mask.bin").is_file());
                        assert_eq!(
                            std::fs::read(compiling.path().join("model.mil")).unwrap(),
                            b"mil"
                        );
                        let lease = compiling.into_lease();
                        framework_unload(&lease);
                    }
                });
            }
        });
        assert_eq!(dirs.users("shared"), 0);
        assert!(!root.join("shared").exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}

//! Atomic file writes: a reader, or a run killed at any moment, sees the old file or the
//! complete new one, never a part. Every file the project writes for keeps (checkpoints, token
//! files, tokenizers, metrics, model exports, arrays) goes through here.

use std::io::{self, Write};
use std::path::Path;

/// The name of every temporary file an atomic write makes starts with this; a write killed
/// halfway leaves one behind.
pub const TEMP_PREFIX: &str = ".anetrain-tmp-";

/// Writes `path` with `write` through a temporary file in the same directory (a rename is only
/// atomic within one file system): written, flushed to disk, renamed over `path`, then the
/// directory synced so that the rename itself survives a power cut. On any error the
/// temporary file is removed and `path` is untouched.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Dot-prefixed, so that one left over from a crash is hidden and plainly not an output.
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    // Temporary files are created owner-only; outputs get the usual permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    {
        let mut out = io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut out)?;
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// [`atomic_write`] of bytes held in memory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write(path, |out| out.write_all(bytes))
}

/// Best effort: some platforms and file systems cannot fsync a directory, and the data itself
/// is on disk by then.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_replaces_the_file_whole_with_the_usual_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(names(dir.path()), ["out.bin"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"old").unwrap();
        let failed = atomic_write(&path, |out| {
            out.write_all(&[7; 4096])?;
            Err(io::Error::other("the writer gave up"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "the writer gave up");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["out.bin"]);
    }
}

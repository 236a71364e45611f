//! Atomic file writes: a reader, or a run killed at any moment, sees the old file or the complete
//! new one, never a part.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename over `path`, then fsync the directory so the rename itself survives a power loss. On
/// any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Dot-prefixed so that a left-over from a crash is hidden and obviously not an output.
    let mut tmp = tempfile::Builder::new()
        .prefix(".anetrain-tmp-")
        .tempfile_in(dir)?;
    // Temporary files are created owner-only; outputs get the usual permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Best effort: some platforms and file systems cannot fsync a directory, and the data itself
/// is already on disk by then.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

//! Model files of other tools: llama2.c's `run.c` format and safetensors with Hugging Face Llama
//! tensor names. Both map to and from our [`ModelConfig`](crate::ModelConfig) and
//! [`Params`](crate::Params); both write atomically.

pub mod llama2c;
pub mod safetensors;

use std::io::{self, Read, Write};
use std::path::Path;

/// Writes `path` so that a crash or kill at any moment leaves either the old file or the complete
/// new one, never a torn one: the bytes go to a temporary file in the same directory (a rename
/// is only atomic within one file system), which is flushed to disk before it is renamed over
/// `path`; the directory is synced so that the rename itself survives a power cut.
pub(crate) fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The temporary file deletes itself if anything below fails.
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut out = io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut out)?;
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Bytes per chunk when converting between little-endian bytes and f32, so that neither reading
/// nor writing holds a second copy of a large tensor.
const CHUNK_FLOATS: usize = 1 << 14;

/// Fills `dst` with little-endian f32 values from `src`.
pub(crate) fn read_f32s(src: &mut impl Read, dst: &mut [f32]) -> io::Result<()> {
    let mut bytes = vec![0u8; CHUNK_FLOATS * 4];
    for chunk in dst.chunks_mut(CHUNK_FLOATS) {
        let bytes = &mut bytes[..chunk.len() * 4];
        src.read_exact(bytes)?;
        for (v, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(())
}

/// Writes `src` as little-endian f32 values.
pub(crate) fn write_f32s(dst: &mut dyn Write, src: &[f32]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(CHUNK_FLOATS * 4);
    for chunk in src.chunks(CHUNK_FLOATS) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        dst.write_all(&bytes)?;
    }
    Ok(())
}

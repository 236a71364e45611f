//! Model files of other tools: llama2.c's `run.c` format and safetensors with Hugging Face Llama
//! tensor names. Both map to and from our [`ModelConfig`] and [`Params`]; both write
//! atomically.

pub mod atomic;
pub mod hf;
pub mod llama2c;
pub mod safetensors;

use crate::{ModelConfig, Params};
use std::io::{self, Read, Write};
use std::path::Path;

/// Why a model file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error(transparent)]
    Llama2c(#[from] llama2c::Llama2cError),
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafetensorsError),
    #[error(transparent)]
    HfFolder(#[from] hf::HfError),
    #[error(
        "{0}: expected a llama2.c model (.bin), a .safetensors file or a Hugging Face model folder"
    )]
    UnknownKind(String),
}

/// Weights from a model file: llama2.c `.bin`, `.safetensors` (whose configuration comes from
/// its own metadata, else from `config`), or a Hugging Face model folder (see [`hf`]).
pub fn load_model_file(
    path: &Path,
    config: Option<&ModelConfig>,
) -> Result<Params, ModelFileError> {
    if path.is_dir() {
        return Ok(hf::read_folder(path)?);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("bin") => Ok(llama2c::read(path)?),
        Some("safetensors") => Ok(safetensors::read(path, config)?),
        _ => Err(ModelFileError::UnknownKind(path.display().to_string())),
    }
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

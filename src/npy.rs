//! NumPy `.npy` tensors in and out (fp16 or fp32, C order), so results can be checked with numpy.

use anetrain_mil::DType;
use anetrain_model::io::atomic::atomic_write;
use anyhow::{anyhow, bail, Context};
use half::f16;
use npyz::WriterBuilder;
use std::path::Path;

pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads an fp16 or fp32 array in C order.
pub fn read(path: &Path) -> anyhow::Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| anyhow!("{}: not a valid .npy file: {e}", path.display()))?;
    if npy.order() != npyz::Order::C {
        bail!(
            "{}: Fortran-ordered arrays are not supported; save with C order",
            path.display()
        );
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr();
    let data = match descr.as_str() {
        "'<f4'" => npy.into_vec::<f32>(),
        "'<f2'" => npy
            .into_vec::<f16>()
            .map(|v| v.into_iter().map(f16::to_f32).collect()),
        other => bail!(
            "{}: dtype {} is not supported (use float16 or float32)",
            path.display(),
            other.trim_matches('\'')
        ),
    }
    .map_err(|e| anyhow!("{}: truncated or corrupt data: {e}", path.display()))?;
    if data.len() != shape.iter().product::<usize>() {
        bail!(
            "{}: holds {} values for shape {shape:?}",
            path.display(),
            data.len()
        );
    }
    Ok(Tensor { shape, data })
}

/// Writes an array as `dtype` (fp16 or fp32; other dtypes as fp32), atomically (see
/// [`atomic_write`]): a failure never leaves a partial file.
pub fn write_atomic(
    path: &Path,
    dtype: DType,
    shape: &[usize],
    data: &[f32],
) -> anyhow::Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    atomic_write(path, |mut out| {
        if dtype == DType::Fp16 {
            let mut w = npyz::WriteOptions::<f16>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()?;
            w.extend(data.iter().map(|&v| f16::from_f32(v)))?;
            w.finish()
        } else {
            let mut w = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()?;
            w.extend(data.iter().copied())?;
            w.finish()
        }
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

//! Where a constant's values come from, and reading them from the weight files.

use crate::{fp16, DeviceError};
use anetrain_mil::blob::{MatrixValues, WeightFiles};
use anetrain_mil::{DType, Literal, Scalar};
use std::borrow::Cow;
use std::sync::Arc;

/// Where a constant's values come from.
#[derive(Clone, Debug)]
pub(super) enum ConstSource {
    /// Inline literals, computed (and rounded) once when the program is lowered.
    Fixed(Arc<Vec<f32>>),
    /// A BLOBFILE tensor, read from the weight files at every bind.
    Blob {
        path: String,
        offset: u64,
        dtype: DType,
        shape: Vec<usize>,
        round: bool,
    },
    /// `constexpr_affine_dequantize`, whose operands may be BLOBFILE tensors.
    Dequantize {
        data: Literal,
        scale: Literal,
        zero: Option<Literal>,
        axis: usize,
        round: bool,
    },
}

impl ConstSource {
    /// The constant's values: borrowed where they already exist as f32s (inline literals,
    /// and fp32 weights read in place from their file), else computed.
    pub(super) fn values<'a>(
        &'a self,
        weights: &'a WeightFiles,
    ) -> Result<Cow<'a, [f32]>, DeviceError> {
        let rounded = |values: Cow<'a, [f32]>, round: bool| {
            if !round {
                return values;
            }
            let mut v = values.into_owned();
            fp16::round_slice(&mut v);
            Cow::Owned(v)
        };
        Ok(match self {
            ConstSource::Fixed(values) => Cow::Borrowed(values.as_slice()),
            ConstSource::Blob {
                path,
                offset,
                dtype,
                shape,
                round,
            } => rounded(blob_f32(weights, path, *offset, *dtype, shape)?, *round),
            ConstSource::Dequantize {
                data,
                scale,
                zero,
                axis,
                round,
            } => {
                let shape = data.ty().shape().to_vec();
                let data = literal_f32(weights, data)?;
                let scale = literal_f32(weights, scale)?;
                let zero = match zero {
                    Some(z) => literal_f32(weights, z)?,
                    None => Cow::Owned(vec![0.0]),
                };
                let values = dequantize(&data, &scale, &zero, &shape, *axis);
                rounded(Cow::Owned(values), *round)
            }
        })
    }

    /// [`ConstSource::values`] for a constant that only packed products read, which can pack
    /// a matrix from its transpose: a weight file that views a transposed matrix is not
    /// written out.
    pub(super) fn matrix_values<'a>(
        &'a self,
        weights: &'a WeightFiles,
    ) -> Result<MatrixValues<'a>, DeviceError> {
        match self {
            ConstSource::Blob {
                path,
                offset,
                dtype,
                shape,
                round: false,
            } => blob_matrix(weights, path, *offset, *dtype, shape),
            _ => self.values(weights).map(MatrixValues::Dense),
        }
    }

    /// The weight file a constant is read from alone, if any.
    pub(super) fn file<'a>(&self, weights: &'a WeightFiles) -> Option<&'a Arc<Vec<u8>>> {
        match self {
            ConstSource::Blob { path, .. } => weights.shared(path),
            _ => None,
        }
    }

    /// The constant as the plan holds it: inline literals shared, the rest owned.
    pub(super) fn hold(&self, values: Cow<'_, [f32]>) -> Arc<Vec<f32>> {
        match self {
            ConstSource::Fixed(values) => values.clone(),
            _ => Arc::new(values.into_owned()),
        }
    }
}

/// The values of a literal, reading BLOBFILE data from `weights`.
pub(super) fn literal_f32<'a>(
    weights: &'a WeightFiles,
    lit: &'a Literal,
) -> Result<Cow<'a, [f32]>, DeviceError> {
    match lit {
        Literal::Scalar { value, .. } => Ok(Cow::Owned(vec![scalar_f32(value)?])),
        Literal::Tensor { values, .. } => values.iter().map(scalar_f32).collect(),
        Literal::Blob {
            dtype,
            shape,
            path,
            offset,
        } => blob_f32(weights, path, *offset, *dtype, shape),
    }
}

fn blob_f32<'a>(
    weights: &'a WeightFiles,
    path: &str,
    offset: u64,
    dtype: DType,
    shape: &[usize],
) -> Result<Cow<'a, [f32]>, DeviceError> {
    present(weights, path)?;
    weights
        .tensor_f32(path, offset, dtype, shape)
        .map_err(|source| weights_error(path, source))
}

/// [`blob_f32`] for a reader that can also take a matrix as the transpose of one held
/// elsewhere (see [`WeightFiles::matrix_f32`]).
fn blob_matrix<'a>(
    weights: &'a WeightFiles,
    path: &str,
    offset: u64,
    dtype: DType,
    shape: &[usize],
) -> Result<MatrixValues<'a>, DeviceError> {
    present(weights, path)?;
    weights
        .matrix_f32(path, offset, dtype, shape)
        .map_err(|source| weights_error(path, source))
}

fn present(weights: &WeightFiles, path: &str) -> Result<(), DeviceError> {
    if weights.contains(path) {
        Ok(())
    } else {
        Err(DeviceError::MissingWeights(path.to_string()))
    }
}

fn weights_error(path: &str, source: anetrain_mil::BlobError) -> DeviceError {
    DeviceError::Weights {
        path: path.to_string(),
        source: Box::new(source),
    }
}

/// `(q − zero) · scale`, with `scale` and `zero` either scalars or one value per index of
/// `axis`.
fn dequantize(data: &[f32], scale: &[f32], zero: &[f32], shape: &[usize], axis: usize) -> Vec<f32> {
    let inner: usize = shape.get(axis + 1..).map_or(1, |s| s.iter().product());
    let along = shape.get(axis).copied().unwrap_or(1);
    let pick = |v: &[f32], i: usize| {
        if v.len() == 1 {
            v[0]
        } else {
            // The checker matched the vector's length to the axis.
            v.get((i / inner.max(1)) % along.max(1))
                .copied()
                .unwrap_or(f32::NAN)
        }
    };
    data.iter()
        .enumerate()
        .map(|(i, &q)| (q - pick(zero, i)) * pick(scale, i))
        .collect()
}

fn scalar_f32(s: &Scalar) -> Result<f32, DeviceError> {
    s.as_f64().map(|v| v as f32).ok_or_else(|| {
        DeviceError::CompileFailed("a string constant is used as tensor data".to_string())
    })
}

//! The layout of the I/O surfaces (spec 1.5) and the conversions between the host's f32
//! buffers and their bytes.
//!
//! A surface is one row of bytes holding the tensor dense and row-major in its MIL dimension
//! order, fp16 or fp32 as the program declares, little-endian. Its allocation is rounded up to
//! the chip's alignment; the tensor occupies the first `data_bytes`.

use crate::DeviceError;
use anetrain_mil::{DType, Param};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Element types an I/O surface can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoType {
    Fp16,
    Fp32,
}

impl IoType {
    pub fn bytes(self) -> usize {
        match self {
            IoType::Fp16 => 2,
            IoType::Fp32 => 4,
        }
    }
}

/// The size of one input's or output's surface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SurfaceLayout {
    /// The MIL parameter or output name, for error messages.
    pub name: String,
    pub io_type: IoType,
    pub elements: usize,
    /// Bytes the tensor occupies.
    pub data_bytes: usize,
    /// Bytes allocated: `data_bytes` rounded up to the alignment.
    pub alloc_bytes: usize,
}

impl SurfaceLayout {
    /// The layout of `param`'s surface, aligned to `alignment` bytes (a power of two).
    pub fn for_param(param: &Param, alignment: usize) -> Result<SurfaceLayout, DeviceError> {
        let unsupported = |why: String| DeviceError::Unsupported {
            op: param.name.clone(),
            kind: "function input/output".into(),
            message: why,
        };
        let io_type = match param.ty.dtype() {
            DType::Fp16 => IoType::Fp16,
            DType::Fp32 => IoType::Fp32,
            other => {
                return Err(unsupported(format!(
                    "the ANE exchanges fp16 or fp32 tensors, not {other}"
                )))
            }
        };
        let elements = param.ty.num_elements();
        let too_large = || unsupported(format!("{} is too large for a surface", param.ty));
        let data_bytes = elements
            .checked_mul(io_type.bytes())
            .ok_or_else(too_large)?;
        let alloc_bytes = data_bytes
            .max(1)
            .checked_next_multiple_of(alignment)
            .ok_or_else(too_large)?;
        Ok(SurfaceLayout {
            name: param.name.clone(),
            io_type,
            elements,
            data_bytes,
            alloc_bytes,
        })
    }

    /// Writes host values into a surface's bytes (the first `data_bytes` of it), converting to
    /// the surface's type; fp16 rounds to nearest even, as the hardware conversion does.
    pub fn encode(&self, src: &[f32], dst: &mut [u8]) {
        let dst = &mut dst[..self.data_bytes];
        match self.io_type {
            IoType::Fp32 => {
                for (bytes, v) in dst.chunks_exact_mut(4).zip(src) {
                    bytes.copy_from_slice(&v.to_le_bytes());
                }
            }
            IoType::Fp16 => {
                for_each_f16_chunk(src.len(), |range, halves| {
                    halves.convert_from_f32_slice(&src[range.clone()]);
                    let bytes = &mut dst[range.start * 2..range.end * 2];
                    for (b, h) in bytes.chunks_exact_mut(2).zip(halves.iter()) {
                        b.copy_from_slice(&h.to_le_bytes());
                    }
                });
            }
        }
    }

    /// Reads a surface's bytes into host values.
    pub fn decode(&self, src: &[u8], dst: &mut [f32]) {
        let src = &src[..self.data_bytes];
        match self.io_type {
            IoType::Fp32 => {
                for (v, bytes) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *v = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                }
            }
            IoType::Fp16 => {
                for_each_f16_chunk(dst.len(), |range, halves| {
                    let bytes = &src[range.start * 2..range.end * 2];
                    for (h, b) in halves.iter_mut().zip(bytes.chunks_exact(2)) {
                        *h = f16::from_le_bytes([b[0], b[1]]);
                    }
                    halves.convert_to_f32_slice(&mut dst[range]);
                });
            }
        }
    }
}

/// Calls `f` with consecutive element ranges covering `0..n` and a stack buffer of fp16 values
/// as long as each range: `half` converts whole slices with SIMD, element by element is slow.
fn for_each_f16_chunk(n: usize, mut f: impl FnMut(std::ops::Range<usize>, &mut [f16])) {
    const CHUNK: usize = 512;
    let mut buffer = [f16::ZERO; CHUNK];
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        f(start..end, &mut buffer[..end - start]);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_mil::Type;

    fn param(dtype: DType, shape: &[usize]) -> Param {
        Param {
            name: "x".into(),
            ty: Type::tensor(dtype, shape.to_vec()),
        }
    }

    #[test]
    fn sizes_follow_the_declared_type_and_round_up_to_the_alignment() {
        let l = SurfaceLayout::for_param(&param(DType::Fp16, &[1, 64, 1, 32]), 128).unwrap();
        assert_eq!((l.io_type, l.elements), (IoType::Fp16, 2048));
        assert_eq!((l.data_bytes, l.alloc_bytes), (4096, 4096));
        let l = SurfaceLayout::for_param(&param(DType::Fp32, &[1, 64, 1, 32]), 128).unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (8192, 8192));
        let l = SurfaceLayout::for_param(&param(DType::Fp16, &[1, 3, 1, 5]), 128).unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (30, 128));
        let l = SurfaceLayout::for_param(&param(DType::Fp16, &[1, 3, 1, 50]), 256).unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (300, 512));
    }

    #[test]
    fn other_io_types_are_refused_by_name() {
        let err = SurfaceLayout::for_param(&param(DType::Int32, &[1, 4]), 128).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("x") && text.contains("int32"), "{text}");
    }

    #[test]
    fn a_size_that_overflows_is_refused() {
        let huge = param(DType::Fp32, &[usize::MAX / 2, 1]);
        assert!(SurfaceLayout::for_param(&huge, 128).is_err());
    }

    #[test]
    fn fp16_round_trips_through_little_endian_bytes() {
        let l = SurfaceLayout::for_param(&param(DType::Fp16, &[1, 3, 1, 700]), 128).unwrap();
        let src: Vec<f32> = (0..2100).map(|i| (i as f32 - 1000.0) / 7.0).collect();
        let mut bytes = vec![0xAA; l.alloc_bytes];
        l.encode(&src, &mut bytes);
        // 1.0 is 0x3C00 in fp16: element i = 1007 holds (1007 - 1000) / 7 = 1.
        assert_eq!(&bytes[1007 * 2..1007 * 2 + 2], &[0x00, 0x3C]);
        assert!(
            bytes[l.data_bytes..].iter().all(|&b| b == 0xAA),
            "padding untouched"
        );
        let mut back = vec![0.0; 2100];
        l.decode(&bytes, &mut back);
        for (a, b) in src.iter().zip(&back) {
            assert_eq!(*b, f16::from_f32(*a).to_f32());
        }
    }

    #[test]
    fn fp16_encoding_rounds_to_nearest_even_and_saturates_to_infinity() {
        let l = SurfaceLayout::for_param(&param(DType::Fp16, &[4]), 128).unwrap();
        // 1 + 2^-11 lies halfway between 1 and the next fp16 (1 + 2^-10): ties go to even (1).
        let src = [
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            70000.0,
            -70000.0,
        ];
        let mut bytes = vec![0; l.alloc_bytes];
        l.encode(&src, &mut bytes);
        let mut back = [0.0; 4];
        l.decode(&bytes, &mut back);
        assert_eq!(back[0], 1.0);
        assert_eq!(back[1], 1.0 + 4.0 * 2f32.powi(-11));
        assert_eq!(back[2], f32::INFINITY);
        assert_eq!(back[3], f32::NEG_INFINITY);
    }

    #[test]
    fn fp32_is_copied_exactly() {
        let l = SurfaceLayout::for_param(&param(DType::Fp32, &[3]), 128).unwrap();
        let src = [1.0e-30f32, -2.5, f32::MAX];
        let mut bytes = vec![0; l.alloc_bytes];
        l.encode(&src, &mut bytes);
        assert_eq!(&bytes[4..8], &(-2.5f32).to_le_bytes());
        let mut back = [0.0; 3];
        l.decode(&bytes, &mut back);
        assert_eq!(back, src);
    }
}

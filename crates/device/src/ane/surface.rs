//! The layout of the I/O surfaces (spec 1.5) and the conversions between the host's f32
//! buffers and their bytes.
//!
//! A surface is one row of bytes holding the tensor dense and row-major in its MIL dimension
//! order, fp16 or fp32 as the program declares, little-endian. Its allocation is at least the
//! chip's smallest surface (the `surface-size` rule: smaller ones fail with status `0x1d`, and
//! oversizing is harmless), rounded up to the chip's alignment; the tensor occupies the first
//! `data_bytes`.

use crate::DeviceError;
use anetrain_mil::{DType, Param};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// The suffix the framework appends to output names in the model's attributes.
const OUTPUT_NAME_SUFFIX: &str = "@output";

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
    /// The MIL parameter or output name: the order of binding, and error messages.
    pub name: String,
    pub io_type: IoType,
    /// The MIL shape, for the strides of the dense layout.
    pub shape: Vec<usize>,
    pub elements: usize,
    /// Bytes the tensor occupies.
    pub data_bytes: usize,
    /// Bytes allocated: `data_bytes`, at least the chip's smallest surface, rounded up to the
    /// alignment (and raised to the largest surface of the kernel, see [`BoundSurfaces`]).
    pub alloc_bytes: usize,
}

/// The strides of a dense layout, in bytes, as the model's attributes name them: `row` between
/// consecutive rows (the second-to-last axis), `plane` between consecutive channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseStrides {
    pub row: u64,
    pub plane: u64,
}

/// What the loaded model reports about one of its surfaces (`NetworkStatusList[0]`, an entry of
/// `LiveInputList` or `LiveOutputList`); `None` where the attribute is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportedSurface {
    /// `Name`: the MIL name, outputs with `@output` appended.
    pub name: Option<String>,
    /// `RowStride`, in bytes.
    pub row_stride: Option<u64>,
    /// `PlaneStride`, in bytes.
    pub plane_stride: Option<u64>,
}

/// The inputs, or the outputs, of one kernel as the ANE binds them: in alphabetical (byte)
/// order of their MIL names, not in declaration order (ane-constraints section 2; Orion #2,
/// #3, #12, #13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundSurfaces {
    /// In binding order.
    pub layouts: Vec<SurfaceLayout>,
    /// For the tensor declared at position `i` (signature order, the order callers pass
    /// buffers in), its position in `layouts`.
    pub binding_of_declared: Vec<usize>,
}

impl BoundSurfaces {
    /// Orders `declared` (in signature order) for binding.
    pub fn in_binding_order(declared: Vec<SurfaceLayout>) -> BoundSurfaces {
        let mut order: Vec<usize> = (0..declared.len()).collect();
        order.sort_by(|&a, &b| declared[a].name.as_bytes().cmp(declared[b].name.as_bytes()));
        let mut binding_of_declared = vec![0; declared.len()];
        for (bound, &declared_at) in order.iter().enumerate() {
            binding_of_declared[declared_at] = bound;
        }
        let mut slots: Vec<Option<SurfaceLayout>> = declared.into_iter().map(Some).collect();
        let layouts = order
            .iter()
            .map(|&i| slots[i].take().expect("each declared tensor is bound once"))
            .collect();
        BoundSurfaces {
            layouts,
            binding_of_declared,
        }
    }

    pub fn len(&self) -> usize {
        self.layouts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layouts.is_empty()
    }

    /// The layout of the tensor declared at position `declared`.
    pub fn declared(&self, declared: usize) -> &SurfaceLayout {
        &self.layouts[self.binding_of_declared[declared]]
    }
}

/// Gives every surface of one kernel (inputs and outputs) the allocation of the largest: the
/// ANE wants all I/O surfaces of a request the same size, else status `0x1d` (ane-constraints
/// section 2; Orion #2, #3, #12, #13).
pub fn share_largest_allocation(sides: &mut [&mut BoundSurfaces]) {
    let largest = sides
        .iter()
        .flat_map(|side| side.layouts.iter().map(|l| l.alloc_bytes))
        .max()
        .unwrap_or(0);
    for side in sides.iter_mut() {
        for layout in &mut side.layouts {
            layout.alloc_bytes = largest;
        }
    }
}

/// Compares the strides the loaded model reports with the dense layout of each surface, and
/// refuses a mismatch: data written densely into a padded surface is read misplaced, silently
/// (ane-constraints section 2 row 2). `what` is `input` or `output`; `bound` is in binding
/// order. A report is matched by name, or by position when it has none; a missing attribute is
/// not checked.
pub fn check_reported_strides(
    what: &'static str,
    bound: &BoundSurfaces,
    reported: &[ReportedSurface],
) -> Result<(), DeviceError> {
    for (position, layout) in bound.layouts.iter().enumerate() {
        let named = reported.iter().find(|r| {
            r.name
                .as_deref()
                .is_some_and(|n| n.strip_suffix(OUTPUT_NAME_SUFFIX).unwrap_or(n) == layout.name)
        });
        let report = named.or_else(|| reported.get(position).filter(|r| r.name.is_none()));
        let (Some(report), Some(dense)) = (report, layout.dense_strides()) else {
            continue;
        };
        for (stride, reported, expected) in [
            ("row", report.row_stride, dense.row),
            ("plane", report.plane_stride, dense.plane),
        ] {
            match reported {
                Some(reported) if reported != expected => {
                    return Err(DeviceError::StrideMismatch {
                        what,
                        tensor: layout.name.clone(),
                        stride,
                        reported,
                        expected,
                    })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl SurfaceLayout {
    /// The layout of `param`'s surface, of at least `min_bytes`, aligned to `alignment` bytes
    /// (a power of two).
    pub fn for_param(
        param: &Param,
        min_bytes: usize,
        alignment: usize,
    ) -> Result<SurfaceLayout, DeviceError> {
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
            .max(min_bytes)
            .checked_next_multiple_of(alignment)
            .ok_or_else(too_large)?;
        Ok(SurfaceLayout {
            name: param.name.clone(),
            io_type,
            shape: param.ty.shape().to_vec(),
            elements,
            data_bytes,
            alloc_bytes,
        })
    }

    /// The strides of this tensor laid out dense, for tensors of 4 axes (N, C, H, W) or 5
    /// (N, C, D, H, W); `None` for other ranks, whose mapping onto the ANE's axes no source
    /// documents.
    pub fn dense_strides(&self) -> Option<DenseStrides> {
        let &[.., height, width] = self.shape.as_slice() else {
            return None;
        };
        if !(4..=5).contains(&self.shape.len()) {
            return None;
        }
        let row = (width * self.io_type.bytes()) as u64;
        Some(DenseStrides {
            row,
            plane: row * height as u64,
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

    /// The common `surface-size` rule.
    const MIN_SURFACE_BYTES: usize = 49_152;
    use anetrain_mil::Type;

    fn param(dtype: DType, shape: &[usize]) -> Param {
        Param {
            name: "x".into(),
            ty: Type::tensor(dtype, shape.to_vec()),
        }
    }

    fn named(name: &str, dtype: DType, shape: &[usize]) -> SurfaceLayout {
        let p = Param {
            name: name.into(),
            ty: Type::tensor(dtype, shape.to_vec()),
        };
        SurfaceLayout::for_param(&p, MIN_SURFACE_BYTES, 128).unwrap()
    }

    #[test]
    fn sizes_follow_the_declared_type_with_the_smallest_allocation_as_a_floor() {
        let l =
            SurfaceLayout::for_param(&param(DType::Fp16, &[1, 64, 1, 32]), MIN_SURFACE_BYTES, 128)
                .unwrap();
        assert_eq!((l.io_type, l.elements), (IoType::Fp16, 2048));
        assert_eq!((l.data_bytes, l.alloc_bytes), (4096, MIN_SURFACE_BYTES));
        let l =
            SurfaceLayout::for_param(&param(DType::Fp32, &[1, 64, 1, 32]), MIN_SURFACE_BYTES, 128)
                .unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (8192, 49_152));
        let l =
            SurfaceLayout::for_param(&param(DType::Fp16, &[1, 3, 1, 5]), MIN_SURFACE_BYTES, 128)
                .unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (30, 49_152));
        // Exactly the floor stays as it is; one element more rounds up to the alignment.
        let l = SurfaceLayout::for_param(
            &param(DType::Fp16, &[1, 768, 1, 32]),
            MIN_SURFACE_BYTES,
            128,
        )
        .unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (49_152, 49_152));
        let l = SurfaceLayout::for_param(
            &param(DType::Fp16, &[1, 768, 1, 33]),
            MIN_SURFACE_BYTES,
            128,
        )
        .unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (50_688, 50_688));
        let l = SurfaceLayout::for_param(
            &param(DType::Fp16, &[1, 3, 1, 8193]),
            MIN_SURFACE_BYTES,
            256,
        )
        .unwrap();
        assert_eq!((l.data_bytes, l.alloc_bytes), (49_158, 49_408));
        // An alignment the floor is not a multiple of rounds the floor up too.
        let l = SurfaceLayout::for_param(
            &param(DType::Fp16, &[1, 3, 1, 5]),
            MIN_SURFACE_BYTES,
            32_768,
        )
        .unwrap();
        assert_eq!(l.alloc_bytes, 65_536);
    }

    #[test]
    fn surfaces_are_bound_in_name_order_and_mapped_back_to_declaration_order() {
        let declared = vec![
            named("x", DType::Fp16, &[1, 8, 1, 32]),
            named("W", DType::Fp16, &[1, 8, 1, 64]),
            named("bias", DType::Fp16, &[1, 8, 1, 16]),
        ];
        let bound = BoundSurfaces::in_binding_order(declared.clone());
        let names: Vec<&str> = bound.layouts.iter().map(|l| l.name.as_str()).collect();
        // Byte order: upper case sorts before lower case.
        assert_eq!(names, ["W", "bias", "x"]);
        assert_eq!(bound.binding_of_declared, [2, 0, 1]);
        for (i, layout) in declared.iter().enumerate() {
            assert_eq!(bound.declared(i), layout);
        }
    }

    #[test]
    fn every_surface_of_a_kernel_gets_the_largest_allocation() {
        let mut inputs = BoundSurfaces::in_binding_order(vec![
            named("a", DType::Fp16, &[1, 8, 1, 32]),
            named("b", DType::Fp32, &[1, 1024, 1, 32]),
        ]);
        let mut outputs =
            BoundSurfaces::in_binding_order(vec![named("y", DType::Fp16, &[1, 8, 1, 32])]);
        share_largest_allocation(&mut [&mut inputs, &mut outputs]);
        for l in inputs.layouts.iter().chain(&outputs.layouts) {
            assert_eq!(l.alloc_bytes, 1024 * 32 * 4, "{}", l.name);
        }
        assert_eq!(
            inputs.declared(0).data_bytes,
            8 * 32 * 2,
            "data sizes unchanged"
        );
    }

    fn report(name: Option<&str>, row: Option<u64>, plane: Option<u64>) -> ReportedSurface {
        ReportedSurface {
            name: name.map(String::from),
            row_stride: row,
            plane_stride: plane,
        }
    }

    #[test]
    fn dense_strides_are_a_row_of_the_last_axis_and_a_plane_of_the_last_two() {
        let l = named("x", DType::Fp16, &[1, 768, 1, 256]);
        assert_eq!(
            l.dense_strides(),
            Some(DenseStrides {
                row: 512,
                plane: 512
            })
        );
        let l = named("x", DType::Fp32, &[1, 4, 3, 16]);
        assert_eq!(
            l.dense_strides(),
            Some(DenseStrides {
                row: 64,
                plane: 192
            })
        );
        let l = named("x", DType::Fp16, &[1, 4, 2, 3, 16]);
        assert_eq!(l.dense_strides(), Some(DenseStrides { row: 32, plane: 96 }));
        assert_eq!(named("x", DType::Fp16, &[4, 16]).dense_strides(), None);
    }

    #[test]
    fn reported_strides_that_match_the_dense_layout_or_are_missing_pass() {
        let bound = BoundSurfaces::in_binding_order(vec![
            named("x", DType::Fp16, &[1, 64, 1, 32]),
            named("k", DType::Fp16, &[1, 64, 1, 16]),
        ]);
        let dense = [
            report(Some("k"), Some(32), Some(32)),
            report(Some("x"), Some(64), Some(64)),
        ];
        assert!(check_reported_strides("input", &bound, &dense).is_ok());
        let by_position = [report(None, Some(32), None), report(None, None, Some(64))];
        assert!(check_reported_strides("input", &bound, &by_position).is_ok());
        assert!(check_reported_strides("input", &bound, &[]).is_ok());
        assert!(check_reported_strides("input", &bound, &[report(None, None, None)]).is_ok());
    }

    #[test]
    fn a_padded_row_stride_is_refused_naming_the_tensor_and_both_strides() {
        // A [1, C, 1, 16] fp16 surface whose rows the model pads to 32 elements.
        let bound =
            BoundSurfaces::in_binding_order(vec![named("y", DType::Fp16, &[1, 768, 1, 16])]);
        let padded = [report(Some("y@output"), Some(64), Some(64))];
        let err = check_reported_strides("output", &bound, &padded).unwrap_err();
        match &err {
            DeviceError::StrideMismatch {
                what,
                tensor,
                stride,
                reported,
                expected,
            } => {
                assert_eq!(
                    (*what, tensor.as_str(), *stride, *reported, *expected),
                    ("output", "y", "row", 64, 32)
                );
            }
            other => panic!("expected StrideMismatch, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("`y`") && text.contains("64 bytes") && text.contains("has 32"),
            "{text}"
        );
    }

    #[test]
    fn a_plane_stride_mismatch_is_refused_and_reports_are_matched_by_name() {
        // Declared b then a; bound a then b. The report lists b first, by name.
        let bound = BoundSurfaces::in_binding_order(vec![
            named("b", DType::Fp16, &[1, 4, 2, 32]),
            named("a", DType::Fp16, &[1, 4, 1, 32]),
        ]);
        let reports = [
            report(Some("b"), Some(64), Some(4096)),
            report(Some("a"), Some(64), Some(64)),
        ];
        match check_reported_strides("input", &bound, &reports) {
            Err(DeviceError::StrideMismatch {
                tensor,
                stride: "plane",
                reported: 4096,
                expected: 128,
                ..
            }) => assert_eq!(tensor, "b"),
            other => panic!("expected a plane StrideMismatch for b, got {other:?}"),
        }
    }

    #[test]
    fn other_io_types_are_refused_by_name() {
        let err = SurfaceLayout::for_param(&param(DType::Int32, &[1, 4]), MIN_SURFACE_BYTES, 128)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("x") && text.contains("int32"), "{text}");
    }

    #[test]
    fn a_size_that_overflows_is_refused() {
        let huge = param(DType::Fp32, &[usize::MAX / 2, 1]);
        assert!(SurfaceLayout::for_param(&huge, MIN_SURFACE_BYTES, 128).is_err());
    }

    #[test]
    fn fp16_round_trips_through_little_endian_bytes() {
        let l =
            SurfaceLayout::for_param(&param(DType::Fp16, &[1, 3, 1, 700]), MIN_SURFACE_BYTES, 128)
                .unwrap();
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
        let l =
            SurfaceLayout::for_param(&param(DType::Fp16, &[4]), MIN_SURFACE_BYTES, 128).unwrap();
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
        let l =
            SurfaceLayout::for_param(&param(DType::Fp32, &[3]), MIN_SURFACE_BYTES, 128).unwrap();
        let src = [1.0e-30f32, -2.5, f32::MAX];
        let mut bytes = vec![0; l.alloc_bytes];
        l.encode(&src, &mut bytes);
        assert_eq!(&bytes[4..8], &(-2.5f32).to_le_bytes());
        let mut back = [0.0; 3];
        l.decode(&bytes, &mut back);
        assert_eq!(back, src);
    }
}

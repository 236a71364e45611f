//! fp16 rounding of f32 buffers: how the CPU device behaves like the ANE in fp16 mode.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Rounds every value to the nearest fp16 (ties to even), keeping it as f32. Values beyond
/// fp16's range become ±inf, as they would on the ANE.
pub fn round_slice(values: &mut [f32]) {
    // Convert through a small stack buffer so `half` can use its vectorised slice conversions.
    const CHUNK: usize = 256;
    let mut tmp = [f16::ZERO; CHUNK];
    for chunk in values.chunks_mut(CHUNK) {
        let tmp = &mut tmp[..chunk.len()];
        tmp.convert_from_f32_slice(chunk);
        tmp.convert_to_f32_slice(chunk);
    }
}

/// One value rounded to fp16 precision.
pub fn round(value: f32) -> f32 {
    f16::from_f32(value).to_f32()
}

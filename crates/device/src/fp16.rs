//! fp16 rounding of f32 buffers: how the CPU device behaves like the ANE in fp16 mode.

/// The value fp16 rounding gives `x` (ties to even), kept as f32. Values beyond fp16's range
/// become ±inf, as they would on the ANE; NaN stays NaN.
///
/// Written with bit operations and selects only, so that loops over slices vectorise: fp16 mode
/// rounds every tensor at every op boundary, and this is on the hot path.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    const MIN_NORMAL: f32 = 6.103_515_6e-5; // 2^-14
    const MAX_FINITE: f32 = 65504.0;
    let bits = x.to_bits();
    let abs = x.abs();
    // Normal range: drop 13 mantissa bits, rounding to nearest, ties to even; a carry into the
    // exponent is the correct result.
    let normal = f32::from_bits((bits + 0x0FFF + ((bits >> 13) & 1)) & !0x1FFF);
    // Subnormal range: spacing 2^-24; adding and removing 0.5 (whose ulp is 2^-24) rounds there.
    let half = 0.5f32.copysign(x);
    // The sign bit is put back so that tiny negatives round to -0, as fp16 does.
    let subnormal = f32::from_bits(((x + half) - half).to_bits() | (bits & 0x8000_0000));
    let rounded = if abs < MIN_NORMAL { subnormal } else { normal };
    let overflowed = f32::INFINITY.copysign(x);
    if x.is_nan() {
        x
    } else if rounded.abs() > MAX_FINITE {
        overflowed
    } else {
        rounded
    }
}

/// Rounds every value to the nearest fp16 (ties to even), in place.
pub fn round_slice(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = round(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn reference(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }

    #[test]
    fn matches_half_on_a_sweep_of_bit_patterns() {
        // Every 97th f32 bit pattern covers all exponents, signs and many mantissas.
        let mut bits: u32 = 0;
        loop {
            let x = f32::from_bits(bits);
            let (got, want) = (round(x), reference(x));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "x = {x:e} ({bits:#010x}): got {got:e}, want {want:e}"
            );
            match bits.checked_add(97) {
                Some(b) => bits = b,
                None => break,
            }
        }
    }

    #[test]
    fn edge_cases() {
        // Ties to even at 1 + 2^-11 (halfway between 1 and 1 + 2^-10): rounds down to 1.
        assert_eq!(round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(
            round(1.0 + 3.0 * 2f32.powi(-11)),
            1.0 + 2.0 * 2f32.powi(-10)
        );
        assert_eq!(round(65504.0), 65504.0);
        assert_eq!(round(65519.0), 65504.0);
        assert_eq!(round(65520.0), f32::INFINITY);
        assert_eq!(round(-1e9), f32::NEG_INFINITY);
        assert_eq!(round(2f32.powi(-24)), 2f32.powi(-24));
        assert_eq!(round(2f32.powi(-26)), 0.0);
        assert_eq!(round(1e-5), reference(1e-5));
        assert!(round(f32::NAN).is_nan());
    }
}

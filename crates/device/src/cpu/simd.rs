//! Running plain loops with the host's wide vector units.
//!
//! The crates are built for the x86-64 baseline (SSE2: four f32 lanes, no FMA), so that the
//! binary runs on any x86-64 CPU. The elementwise loops of a training step (activations,
//! softmax, cross-entropy over the vocabulary, the optimizer) are written as plain loops that
//! the compiler vectorises; [`vectorised`] compiles such a loop a second time for AVX2 and FMA
//! (eight lanes) and picks that copy when the CPU has them.

/// Whether this CPU has AVX2 and FMA (checked once; the answer is cached by std).
#[inline]
pub fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f`, compiled for AVX2 and FMA when the CPU has them, so that its loops are
/// vectorised eight lanes wide. Only code inlined into the wide copy is compiled wide, and
/// the compiler does not inline a closure with loops in it on its own: pass a closure marked
/// `#[inline(always)]` that calls an `#[inline(always)]` function holding the loops,
/// `vectorised(#[inline(always)] || body(args))`. The results are the same either way: the
/// compiler does not fuse a multiply and an add into an FMA unless the code asks for
/// `mul_add`.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if wide() {
            // SAFETY: the features were detected just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorised_loops_give_the_results_of_the_baseline_build() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        #[inline(always)]
        fn sigmoid(x: &[f32]) -> Vec<f32> {
            x.iter()
                .map(|&v| 1.0 / (1.0 + super::super::fastmath::exp(-v)))
                .collect()
        }
        let wide = vectorised(
            #[inline(always)]
            || sigmoid(&x),
        );
        let narrow = sigmoid(&x);
        assert_eq!(
            wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            narrow.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // And against an independent reference.
        for (v, &xi) in wide.iter().zip(&x) {
            let want = 1.0 / (1.0 + (-(xi as f64)).exp());
            assert!(
                (*v as f64 - want).abs() <= 1e-6 * want.max(1e-30) + 1e-30,
                "{xi}: {v}"
            );
        }
    }
}

//! The machine's FP32 peak, measured on the spot by a loop of independent fused multiply-adds
//! on every thread: the figure MFU and `% of peak` are computed against.

use std::time::{Duration, Instant};

/// Independent accumulator vectors: enough to cover FMA latency × issue width on current cores.
const ACCUMULATORS: usize = 12;

/// The best of `runs` FMA-loop measurements of `each`: the peak is the best the cores do,
/// and a busy host takes single runs down (far down, at times, on a shared machine).
pub fn best_fma_peak(threads: usize, runs: u32, each: Duration) -> f64 {
    (0..runs.max(1))
        .map(|_| measure_fma_peak(threads, each))
        .fold(0.0, f64::max)
}

/// FLOP/s of all `threads` running the FMA loop for about `duration`.
pub fn measure_fma_peak(threads: usize, duration: Duration) -> f64 {
    let threads = threads.max(1);
    let start = Instant::now();
    let flops: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || fma_loop(duration)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    flops / start.elapsed().as_secs_f64()
}

/// Runs FMAs until `duration` has passed; returns the FLOPs done.
fn fma_loop(duration: Duration) -> f64 {
    let start = Instant::now();
    let mut total = 0.0;
    let mut sink = 0.0f32;
    while start.elapsed() < duration {
        let (flops, s) = fma_block(1 << 20);
        total += flops;
        sink += s;
    }
    std::hint::black_box(sink);
    total
}

#[cfg(target_arch = "x86_64")]
fn fma_block(iterations: usize) -> (f64, f32) {
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        unsafe { fma_block_avx2(iterations) }
    } else {
        fma_block_portable(iterations)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_block(iterations: usize) -> (f64, f32) {
    fma_block_portable(iterations)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_block_avx2(iterations: usize) -> (f64, f32) {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..iterations {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for v in acc {
        sum = _mm256_add_ps(sum, v);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    let flops = (iterations * ACCUMULATORS * 8 * 2) as f64;
    (flops, out.iter().sum())
}

/// Lanes of 4 so that NEON (aarch64) and SSE-class vector units are used by the compiler.
fn fma_block_portable(iterations: usize) -> (f64, f32) {
    let mut acc = [[1.0f32; 4]; ACCUMULATORS];
    for _ in 0..iterations {
        for lanes in acc.iter_mut() {
            for v in lanes.iter_mut() {
                *v = v.mul_add(0.999_999, 1e-7);
            }
        }
    }
    let flops = (iterations * ACCUMULATORS * 4 * 2) as f64;
    (flops, acc.iter().flatten().sum())
}

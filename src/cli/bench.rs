//! `anetrain bench …`: performance measured side by side in one run.

use anetrain_device::cpu::{best_fma_peak, measure_fma_peak};
use anetrain_device::host_math::{gemm, MatLayout};
use anetrain_device::{CpuDevice, Device, Kernel, NumericMode};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::{examples, Program};
use anyhow::Context;
use clap::Subcommand;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training throughput of a model: ms/step split by where the time goes, tokens/s, MFU
    /// and peak memory.
    Train(super::bench_train::TrainArgs),
    /// The weight-delivery strategies side by side on the same data and seed: ms/step, stall,
    /// staleness, final loss (and the frozen-kernel baseline).
    Weights(super::bench_train::WeightsArgs),
    /// The CPU device against the raw matrix crate and the machine's FMA peak.
    Device {
        /// Threads for the device and the baselines.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 30)]
        reps: usize,
    },
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Device { threads, reps } => bench_device(threads, reps.max(3)),
        BenchCommand::Train(bench) => super::bench_train::bench_train(&bench),
        BenchCommand::Weights(bench) => super::bench_train::bench_weights(&bench),
    }
}

/// Median wall time of `reps` runs of `f`, after two warm-up runs.
fn median_time(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    f()?;
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[reps / 2])
}

/// One timed run of a benchmark body and the FMA peak measured just before it.
struct PeakPair {
    time: Duration,
    peak: f64,
}

/// `reps` runs of `f` (after two warm-up runs), each right after a short FMA-peak reading,
/// so that each run and its peak see the same machine load.
fn paired_with_peak(
    threads: usize,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PeakPair>> {
    f()?;
    f()?;
    let mut pairs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let peak = measure_fma_peak(threads, Duration::from_millis(20));
        let t = Instant::now();
        f()?;
        pairs.push(PeakPair {
            time: t.elapsed(),
            peak,
        });
    }
    Ok(pairs)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Bench {
    device: CpuDevice,
    kernel: Kernel,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl Bench {
    fn new(
        mode: NumericMode,
        threads: usize,
        program: &Program,
        weights: &WeightFiles,
    ) -> anyhow::Result<Bench> {
        let device = CpuDevice::new(mode).with_threads(threads);
        let kernel = device
            .compile(program, weights)
            .context("compiling the benchmark kernel")?;
        let input = vec![0.5; kernel.input_lens()[0]];
        let output = vec![0.0; kernel.output_lens()[0]];
        Ok(Bench {
            device,
            kernel,
            input,
            output,
        })
    }

    fn eval(&mut self) -> anyhow::Result<()> {
        self.device
            .eval(&mut self.kernel, &[&self.input], &mut [&mut self.output])
            .map_err(Into::into)
    }
}

fn gflops(flops: f64, t: Duration) -> f64 {
    flops / t.as_secs_f64() / 1e9
}

fn bench_device(threads: usize, reps: usize) -> anyhow::Result<()> {
    println!("CPU device benchmark: {threads} threads, median of {reps} runs each\n");
    let peak = best_fma_peak(threads, 5, Duration::from_millis(200));
    println!(
        "FP32 peak (FMA loop, {threads} threads): {:.1} GFLOPS\n",
        peak / 1e9
    );

    // 1. One 1×1 conv, 768→768, spatial 256, against a plain SGEMM of the same shape.
    let (c, s) = (768, 256);
    let conv = examples::conv_chain(1, c, s);
    let weights = examples::conv_chain_weights(1, c, 0.5);
    let mut k = Bench::new(NumericMode::Fp32, threads, &conv, &weights)?;
    let a = vec![0.01f32; c * c];
    let b = vec![0.5f32; c * s];
    let mut out = vec![0.0f32; c * s];
    let mut raw = || {
        gemm(
            c,
            s,
            c,
            &a,
            MatLayout::row_major(0, c),
            &b,
            MatLayout::row_major(0, s),
            &mut out,
            MatLayout::row_major(0, s),
            false,
            1.0,
            threads,
        );
        Ok(())
    };
    // Interleave the two so that machine noise hits both alike.
    let mut t_conv = Vec::new();
    let mut t_gemm = Vec::new();
    for _ in 0..3 {
        t_conv.push(median_time(reps, || k.eval())?);
        t_gemm.push(median_time(reps, &mut raw)?);
    }
    t_conv.sort();
    t_gemm.sort();
    let flops = 2.0 * (c * c * s) as f64;
    let (tc, tg) = (t_conv[1], t_gemm[1]);
    println!("1x1 conv {c}->{c}, spatial {s}, fp32:");
    println!(
        "  device kernel (incl. I/O copies) {:>8.3} ms  {:>7.1} GFLOPS",
        tc.as_secs_f64() * 1e3,
        gflops(flops, tc)
    );
    println!(
        "  plain SGEMM, same shape          {:>8.3} ms  {:>7.1} GFLOPS",
        tg.as_secs_f64() * 1e3,
        gflops(flops, tg)
    );
    println!(
        "  kernel / SGEMM throughput: {:.1} %\n",
        100.0 * tg.as_secs_f64() / tc.as_secs_f64()
    );

    // 2. 32 chained 1×1 convs of 512 channels at spatial 64, in both modes. On a shared
    // machine the load changes from second to second, and a median eval set against the best
    // FMA reading of the whole run mixes two conditions. So each eval is paired with an FMA
    // reading taken right before it, and the share of peak is the median of those pairs.
    let (n, c, s) = (32, 512, 64);
    let chain = examples::conv_chain(n, c, s);
    let weights = examples::conv_chain_weights(n, c, 0.9);
    let flops = 2.0 * (n * c * c * s) as f64;
    println!(
        "{n} chained 1x1 convs, {c} channels, spatial {s} ({:.2} GFLOP per eval):",
        flops / 1e9
    );
    for mode in [NumericMode::Fp32, NumericMode::Fp16] {
        let mut k = Bench::new(mode, threads, &chain, &weights)?;
        let pairs = paired_with_peak(threads, reps, || k.eval())?;
        let t = median(pairs.iter().map(|p| p.time.as_secs_f64()));
        let share = median(pairs.iter().map(|p| flops / p.time.as_secs_f64() / p.peak));
        let adjacent_peak = median(pairs.iter().map(|p| p.peak));
        println!(
            "  {mode}: {:>8.3} ms  {:>7.1} GFLOPS  {:>5.1} % of peak (median of {} evals, each \
             against an FMA reading next to it: median {:.1} GFLOPS)",
            t * 1e3,
            flops / t / 1e9,
            100.0 * share,
            pairs.len(),
            adjacent_peak / 1e9,
        );
    }

    // 3. A tiny kernel: the fixed cost of one eval, input and output copies included.
    let tiny = examples::conv_chain(1, 64, 32);
    let weights = examples::conv_chain_weights(1, 64, 1.0);
    let mut k = Bench::new(NumericMode::Fp32, threads, &tiny, &weights)?;
    let evals = 2000;
    let t = median_time(reps.min(10), || {
        for _ in 0..evals {
            k.eval()?;
        }
        Ok(())
    })?;
    println!(
        "\ntiny kernel (64->64 conv, spatial 32): {:.2} µs per eval",
        t.as_secs_f64() * 1e6 / evals as f64
    );
    Ok(())
}

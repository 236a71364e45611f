//! `bench train`: a model's training throughput, ms/step split by where the time goes, tokens/s,
//! MFU against the FMA peak measured next to it, and peak memory.

use super::{measured_run, peak_rss, SyntheticWindows};
use crate::delivery::Strategy;
use crate::run::RunError;
use crate::trainer::{StepRecord, TrainOptions};
use anetrain_device::clock::RealClock;
use anetrain_device::cpu::best_fma_peak;
use anetrain_device::host_math::GemmLibrary;
use anetrain_device::{CpuDevice, NumericMode};
use anetrain_mil::check::check_program;
use anetrain_mil::{cost, DType};
use anetrain_model::kernels::{generate_baked, KernelKind};
use anetrain_model::{ModelConfig, ParamLayout};
use std::fmt;
use std::time::Duration;

/// What to measure.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub config: ModelConfig,
    /// Measured steps.
    pub steps: u64,
    /// Steps run first and not measured: they pay one-time costs (first touch of the
    /// optimizer moments and of the buffers).
    pub warmup: u64,
    /// Windows per update.
    pub accum: u32,
    pub mode: NumericMode,
    pub threads: usize,
    /// The library of the host's matrix products.
    pub gemm: GemmLibrary,
}

/// Where one kernel's share of a step goes.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub kind: KernelKind,
    /// Per step, over all layers and windows.
    pub ms: f64,
    pub flops: f64,
}

/// The figures of a `bench train` run (per step unless said otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainBenchReport {
    pub step_ms: f64,
    /// Waiting for compiles (under recompile, the compile itself).
    pub compile_ms: f64,
    pub eval_ms: f64,
    pub kernels: Vec<KernelTime>,
    pub host_ms: f64,
    /// Finishing the weight gradients at the end of the steps, per step over the whole run.
    pub weight_grad_wait_ms: f64,
    /// The weight gradients alongside the evals, per step over the whole run.
    pub weight_grads_ms: f64,
    pub optimizer_ms: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs per second, excluding compile.
    pub gflops: f64,
    /// The best FP32 FMA-loop reading taken before and after the run.
    pub peak_gflops: f64,
    /// The first warm-up step's time excluding compile, if there was one.
    pub first_step_ms: Option<f64>,
    /// Peak resident memory of the whole process, where the system says.
    pub peak_rss_bytes: Option<u64>,
}

impl TrainBenchReport {
    /// Model FLOP utilisation, excluding compile, in percent of the measured peak.
    pub fn mfu(&self) -> f64 {
        100.0 * self.gflops / self.peak_gflops
    }

    pub fn compute_ms(&self) -> f64 {
        self.step_ms - self.compile_ms
    }
}

impl TrainBench {
    /// The line that says what is measured.
    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "bench train: {} ({:.1}M parameters), {} steps of {}×{} tokens after {} warm-up step(s), CPU device {}, {} threads, host products {}, synthetic tokens",
            c.name,
            ParamLayout::new(c).len as f64 / 1e6,
            self.steps.max(1),
            self.accum.max(1),
            c.seq_len,
            self.warmup,
            self.mode,
            self.threads,
            self.gemm
        )
    }

    /// Trains `warmup + steps` recompiled steps on synthetic tokens and measures the last
    /// `steps`.
    pub fn run(&self) -> Result<TrainBenchReport, RunError> {
        let (accum, steps, warmup, threads) = (
            self.accum.max(1),
            self.steps.max(1),
            self.warmup,
            self.threads,
        );
        let config = &self.config;
        let device = CpuDevice::new(self.mode).with_threads(threads);
        let clock = RealClock::new();
        let options = TrainOptions {
            steps: warmup + steps,
            accum,
            eval_every: 0,
            checkpoint_every: 0,
            threads,
            gemm: self.gemm.available().map_err(RunError::Invalid)?,
            ..TrainOptions::default()
        };
        let mut data = SyntheticWindows {
            vocab: config.vocab as u64,
            state: 1,
        };
        let peak_before = best_fma_peak(threads, 5, Duration::from_millis(200));
        let run = measured_run(
            config,
            &options,
            Strategy::Recompile,
            1,
            &device,
            &clock,
            &mut data,
        )?;
        // The warm-up steps pay what a run pays once: the first touch of the optimizer
        // moments (the first update takes many times a steady one), of the step's buffers
        // and of the device's arenas.
        let measured = &run.steps[run.steps.len().saturating_sub(steps as usize)..];
        let mean =
            |f: &dyn Fn(&StepRecord) -> f64| measured.iter().map(f).sum::<f64>() / steps as f64;
        let (step_ms, compile_ms) = (mean(&|r| r.ms), mean(&|r| r.stall_ms));
        let compute_ms = step_ms - compile_ms;
        let c = &run.counters;
        let flops = config.train_flops_per_window() * accum as f64;
        // Measured before and after the run, the best reading kept: other tenants of a
        // shared machine can take one reading down for its whole second.
        let peak = peak_before.max(best_fma_peak(threads, 5, Duration::from_millis(200)));
        // By kernel, with the FLOPs each one's program does (counted from the program, all
        // layers and windows of a step): where the device's share of the step goes.
        let kernels = kernel_flops(config, accum)?
            .into_iter()
            .map(|(kind, flops)| KernelTime {
                kind,
                ms: mean(&|r| r.eval_ms_by_kernel.get(kind.name()).copied().unwrap_or(0.0)),
                flops,
            })
            .collect();
        let per_step = |d: Duration| 1e3 * d.as_secs_f64() / options.steps as f64;
        Ok(TrainBenchReport {
            step_ms,
            compile_ms,
            eval_ms: mean(&|r| r.eval_ms),
            kernels,
            host_ms: mean(&|r| r.host_ms),
            weight_grad_wait_ms: per_step(c.weight_grad_wait),
            weight_grads_ms: per_step(c.weight_grads),
            optimizer_ms: mean(&|r| r.optimizer_ms),
            tokens_per_s: accum as f64 * config.seq_len as f64 / compute_ms * 1e3,
            gflops: flops / compute_ms / 1e6,
            peak_gflops: peak / 1e9,
            first_step_ms: run
                .steps
                .first()
                .filter(|_| warmup > 0)
                .map(|first| first.ms - first.stall_ms),
            peak_rss_bytes: peak_rss(),
        })
    }
}

impl fmt::Display for TrainBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compute_ms = self.compute_ms();
        writeln!(
            f,
            "  ms/step            {:.1} (excluding compile {compute_ms:.1})",
            self.step_ms
        )?;
        writeln!(f, "    device eval      {:.1}", self.eval_ms)?;
        for k in &self.kernels {
            writeln!(
                f,
                "      {:<14} {:>5.1}  ({:.2} GFLOP, {:.1} GFLOPS)",
                k.kind.name(),
                k.ms,
                k.flops / 1e9,
                k.flops / k.ms / 1e6
            )?;
        }
        writeln!(
            f,
            "    host math        {:.1} (of which finishing the weight gradients at the end: {:.1} per step over the whole run)",
            self.host_ms, self.weight_grad_wait_ms
        )?;
        writeln!(
            f,
            "    weight gradients {:.1} per step over the whole run, alongside the evals",
            self.weight_grads_ms
        )?;
        writeln!(f, "    optimizer        {:.1}", self.optimizer_ms)?;
        writeln!(f, "    compile          {:.1}", self.compile_ms)?;
        writeln!(
            f,
            "  tokens/s           {:.0} (excluding compile)",
            self.tokens_per_s
        )?;
        write!(
            f,
            "  MFU                {:.1} % excluding compile: {:.1} GFLOPS of model FLOPs over the measured FP32 peak {:.1} GFLOPS",
            self.mfu(),
            self.gflops,
            self.peak_gflops
        )?;
        if let Some(first) = self.first_step_ms {
            write!(
                f,
                "\n  first step         {first:.1} ms excluding compile (a warm-up step, not measured)"
            )?;
        }
        if let Some(rss) = self.peak_rss_bytes {
            write!(
                f,
                "\n  peak memory        {:.2} GB (resident, whole process)",
                rss as f64 / 1e9
            )?;
        }
        Ok(())
    }
}

/// The FLOPs of each kernel in one step of `accum` windows: its program's count (see
/// [`cost::flops`]) times the layers and windows.
fn kernel_flops(config: &ModelConfig, accum: u32) -> Result<Vec<(KernelKind, f64)>, RunError> {
    KernelKind::ALL
        .iter()
        .map(|&kind| {
            let invalid = |e: &dyn fmt::Display| RunError::Invalid(format!("{}: {e}", kind.name()));
            let kernel = generate_baked(kind, config, DType::Fp32).map_err(|e| invalid(&e))?;
            let checked = check_program(&kernel.program).map_err(|e| invalid(&e))?;
            let main = kernel
                .program
                .main()
                .ok_or_else(|| invalid(&"the kernel has no function"))?;
            let per_window = cost::flops(main, &checked) as f64 * config.n_layers as f64;
            Ok((kind, per_window * accum as f64))
        })
        .collect()
}

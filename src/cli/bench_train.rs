//! `anetrain bench train` and `anetrain bench weights`: training throughput, and the weight
//! delivery strategies side by side.

use anetrain_device::clock::{Clock, RealClock};
use anetrain_device::cpu::best_fma_peak;
use anetrain_device::{CpuDevice, Device, DeviceSpec, NumericMode, OpenDevice};
use anetrain_mil::check::check_program;
use anetrain_mil::{cost, DType};
use anetrain_model::init::init_params;
use anetrain_model::kernels::{generate_baked, KernelKind};
use anetrain_model::step::{compile_kernel_set, BakedPrograms, KernelSet, WeightSnapshot};
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::data::DatasetWindows;
use anetrain_train::delivery::Strategy;
use anetrain_train::run::data::load_data;
use anetrain_train::trainer::{
    train, Counters, DeliverySettings, Event, StepRecord, TrainOptions, TrainSetup, TrainState,
    ValidationSource, WindowSource,
};
use anyhow::anyhow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The FLOPs of each kernel in one step of `accum` windows: its program's count (see
/// [`cost::flops`]) times the layers and windows.
fn kernel_flops(config: &ModelConfig, accum: u32) -> anyhow::Result<Vec<(KernelKind, f64)>> {
    KernelKind::ALL
        .iter()
        .map(|&kind| {
            let kernel = generate_baked(kind, config, DType::Fp32)?;
            let checked = check_program(&kernel.program)?;
            let main = kernel
                .program
                .main()
                .ok_or_else(|| anyhow!("the {} kernel has no function", kind.name()))?;
            let per_window = cost::flops(main, &checked) as f64 * config.n_layers as f64;
            Ok((kind, per_window * accum as f64))
        })
        .collect()
}

/// Deterministic pseudo-random tokens, for throughput measurements of models whose vocabulary
/// has no tokenizer here.
struct SyntheticWindows {
    vocab: u64,
    state: u64,
}

impl SyntheticWindows {
    fn next(&mut self) -> u64 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.state >> 33) % self.vocab
    }
}

impl WindowSource for SyntheticWindows {
    fn next_train_window(&mut self, out: &mut [u32]) {
        for t in out.iter_mut() {
            *t = self.next() as u32;
        }
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "rng": self.state.to_string() })
    }
}

impl ValidationSource for SyntheticWindows {
    fn validation_window(&self, i: usize, out: &mut [u32]) {
        for (j, t) in out.iter_mut().enumerate() {
            *t = ((i * 7919 + j * 104729) as u64 % self.vocab) as u32;
        }
    }
    fn validation_window_count(&self) -> usize {
        4
    }
}

/// What one measured run did.
struct Summary {
    counters: Counters,
    wall: Duration,
    final_train_loss: f32,
    /// At the end of the run (none when the run has no validation).
    val_loss: Option<f32>,
    mean_lag: f64,
    max_lag: u64,
    steps: Vec<StepRecord>,
}

fn measured_run(
    config: &ModelConfig,
    options: &TrainOptions,
    strategy: Strategy,
    max_staleness: u64,
    device: &dyn Device,
    clock: &dyn Clock,
    data: &mut dyn WindowSource,
) -> anyhow::Result<Summary> {
    let layout = Arc::new(ParamLayout::new(config));
    let mut state = TrainState::new(
        init_params(layout, options.seed),
        options,
        device.info().numeric,
    );
    let env = TrainSetup {
        device,
        clock,
        delivery: DeliverySettings {
            max_staleness,
            ..DeliverySettings::new(strategy)
        },
        simulate_host_time: true,
        stop_after: None,
    };
    let mut steps = Vec::new();
    let mut val = None;
    train(&env, options, &mut state, data, None, &mut |e| match e {
        Event::Step(r) => steps.push(r.clone()),
        Event::Validation { loss, .. } => val = Some(*loss),
        _ => {}
    })?;
    let tail = &steps[steps.len().saturating_sub(20)..];
    let lags = || steps.iter().map(|r| r.staleness);
    Ok(Summary {
        wall: state.counters.wall,
        final_train_loss: tail.iter().map(|r| r.loss).sum::<f32>() / tail.len().max(1) as f32,
        val_loss: val,
        mean_lag: lags().sum::<u64>() as f64 / steps.len().max(1) as f64,
        max_lag: lags().max().unwrap_or(0),
        counters: state.counters,
        steps,
    })
}

/// Milliseconds to compile a kernel set on a device that lowers every program afresh, and on
/// one that has lowered the set's programs before (what each recompile of a run costs).
fn compile_times(config: &ModelConfig, device: &CpuDevice) -> anyhow::Result<(f64, f64)> {
    let layout = Arc::new(ParamLayout::new(config));
    let snapshot = |seed: u64| WeightSnapshot {
        version: seed,
        params: Arc::new(init_params(layout.clone(), seed)),
    };
    let programs = Arc::new(BakedPrograms::for_device(device, config)?);
    // A run generates its programs once; a fresh device also lowers them afresh.
    let median_ms = |device: &CpuDevice, fresh: bool| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for seed in 0..6 {
            let snap = snapshot(seed);
            let start = Instant::now();
            if fresh {
                compile_kernel_set(device, snap)?;
            } else {
                programs.compile_set(device, snap)?;
            }
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        // The first compile fills the device's cache: not counted.
        times.remove(0);
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    let cold = median_ms(&device.clone().without_template_cache(), true)?;
    let cached = median_ms(device, false)?;
    Ok((cold, cached))
}

/// One row of `bench weights`.
struct Contender {
    key: &'static str,
    name: String,
    strategy: Strategy,
    compensation: f32,
    prediction: bool,
}

impl Contender {
    fn new(key: &'static str, name: &str, strategy: Strategy) -> Contender {
        Contender {
            key,
            name: name.to_string(),
            strategy,
            compensation: 0.0,
            prediction: false,
        }
    }
}

/// The index of the median of `values` (the upper one of an even count).
fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[order.len() / 2]
}

/// Peak resident memory of this process so far (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn bench_train(
    config: &str,
    steps: u64,
    warmup: u64,
    accum: u32,
    precision: &str,
    threads: usize,
) -> anyhow::Result<()> {
    let accum = accum.max(1);
    let steps = steps.max(1);
    let config = ModelConfig::named(config)?;
    let mode: NumericMode = precision.parse().map_err(|e: String| anyhow!(e))?;
    let device = CpuDevice::new(mode).with_threads(threads);
    let clock = RealClock::new();
    let options = TrainOptions {
        steps: warmup + steps,
        accum,
        eval_every: 0,
        checkpoint_every: 0,
        threads,
        ..TrainOptions::default()
    };
    let params = ParamLayout::new(&config).len;
    println!(
        "bench train: {} ({:.1}M parameters), {steps} steps of {accum}×{} tokens after {warmup} warm-up step(s), CPU device {mode}, {threads} threads, synthetic tokens",
        config.name,
        params as f64 / 1e6,
        config.seq_len
    );
    let mut data = SyntheticWindows {
        vocab: config.vocab as u64,
        state: 1,
    };
    let peak_before = best_fma_peak(threads, 5, Duration::from_millis(200));
    let run = measured_run(
        &config,
        &options,
        Strategy::Recompile,
        1,
        &device,
        &clock,
        &mut data,
    )?;
    // The warm-up steps pay what a run pays once: the first touch of the optimizer moments
    // (the first update takes many times a steady one), of the step's buffers and of the
    // device's arenas.
    let measured = &run.steps[run.steps.len().saturating_sub(steps as usize)..];
    let mean = |f: fn(&StepRecord) -> f64| measured.iter().map(f).sum::<f64>() / steps as f64;
    let (step_ms, stall_ms) = (mean(|r| r.ms), mean(|r| r.stall_ms));
    let compute_ms = step_ms - stall_ms;
    let c = &run.counters;
    let flops = config.train_flops_per_window() * accum as f64;
    // Measured before and after the run, the best reading kept: other tenants of a shared
    // machine can halve one reading for its whole second.
    let peak = peak_before.max(best_fma_peak(threads, 5, Duration::from_millis(200)));
    let gflops = flops / compute_ms / 1e6;
    println!("  ms/step            {step_ms:.1} (excluding compile {compute_ms:.1})");
    println!("    device eval      {:.1}", mean(|r| r.eval_ms));
    // By kernel, with the FLOPs each one's program does (counted from the program, all layers
    // and windows of a step): where the device's share of the step goes.
    for (kind, flops) in kernel_flops(&config, accum)? {
        let name = kind.name();
        let ms = measured
            .iter()
            .map(|r| r.eval_ms_by_kernel.get(name).copied().unwrap_or(0.0))
            .sum::<f64>()
            / steps as f64;
        println!(
            "      {name:<14} {ms:>5.1}  ({:.2} GFLOP, {:.1} GFLOPS)",
            flops / 1e9,
            flops / ms / 1e6
        );
    }
    let per_step = |d: Duration| 1e3 * d.as_secs_f64() / options.steps as f64;
    println!(
        "    host math        {:.1} (of which finishing the weight gradients at the end: {:.1} per step over the whole run)",
        mean(|r| r.host_ms),
        per_step(c.weight_grad_wait)
    );
    println!(
        "    weight gradients {:.1} per step over the whole run, alongside the evals",
        per_step(c.weight_grads)
    );
    println!("    optimizer        {:.1}", mean(|r| r.optimizer_ms));
    println!("    compile          {stall_ms:.1}");
    println!(
        "  tokens/s           {:.0} (excluding compile)",
        accum as f64 * config.seq_len as f64 / compute_ms * 1e3
    );
    println!(
        "  MFU                {:.1} % excluding compile: {gflops:.1} GFLOPS of model FLOPs over the measured FP32 peak {:.1} GFLOPS",
        100.0 * gflops * 1e9 / peak,
        peak / 1e9
    );
    if let (true, Some(first)) = (warmup > 0, run.steps.first()) {
        println!(
            "  first step         {:.1} ms excluding compile (a warm-up step, not measured)",
            first.ms - first.stall_ms
        );
    }
    if let Some(rss) = peak_rss() {
        println!(
            "  peak memory        {:.2} GB (resident, whole process)",
            rss as f64 / 1e9
        );
    }
    Ok(())
}

/// What `bench weights` runs.
#[derive(clap::Args, Debug)]
pub struct WeightsBench {
    #[arg(long, default_value = "tiny")]
    config: String,
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Windows per update: each update, and so each compile, is paid for by this many
    /// forward and backward passes (the original ANE trainer accumulates 10).
    #[arg(long, default_value_t = 1)]
    accum: u32,
    /// Rounds, each running every strategy once between two frozen-kernel runs (medians are
    /// reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Model a chip's compile/eval latencies on a virtual clock (e.g. m4).
    #[arg(long)]
    simulate: Option<String>,
    /// The delay compensation c (λ = c/lr) of the "double-buffer + DC" row (the training
    /// default).
    #[arg(long, default_value_t = 3.0)]
    compensation: f32,
    #[arg(long, default_value_t = 1)]
    max_staleness: u64,
    /// Peak learning rate (default: the training default).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only these rows besides the frozen baseline, comma-separated: recompile,
    /// double-buffer, dc (double-buffer with delay compensation), prediction, dynamic.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub fn bench_weights(bench: &WeightsBench) -> anyhow::Result<()> {
    let WeightsBench {
        ref config,
        steps,
        accum,
        rounds,
        ref simulate,
        compensation,
        max_staleness,
        lr,
        threads,
        ref only,
    } = *bench;
    let simulate = simulate.as_deref();
    let config = ModelConfig::named(config)?;
    let mode = NumericMode::Fp32;
    let defaults = TrainOptions::default();
    let lr = lr.unwrap_or(defaults.lr);
    let cpu = CpuDevice::new(mode).with_threads(threads);
    let base: Arc<dyn Device> = Arc::new(cpu.clone());
    let corpus = if config.name == "tiny" {
        Some(load_data(None, None, None, &config, &mut |_| {})?)
    } else {
        None
    };
    let options = TrainOptions {
        steps,
        lr,
        accum: accum.max(1),
        eval_every: steps,
        eval_windows: 32,
        checkpoint_every: 0,
        threads,
        ..TrainOptions::default()
    };
    let mut contenders: Vec<Contender> = [
        Contender::new("recompile", "recompile", Strategy::Recompile),
        Contender::new(
            "double-buffer",
            &format!("double-buffer (K={max_staleness})"),
            Strategy::DoubleBuffer,
        ),
        Contender {
            compensation,
            ..Contender::new(
                "dc",
                &format!("double-buffer + DC c={compensation}"),
                Strategy::DoubleBuffer,
            )
        },
        Contender {
            prediction: true,
            ..Contender::new(
                "prediction",
                "double-buffer + prediction",
                Strategy::DoubleBuffer,
            )
        },
        Contender::new("dynamic", "dynamic", Strategy::Dynamic),
    ]
    .into_iter()
    .collect();
    if let Some(unknown) = only
        .iter()
        .find(|o| !contenders.iter().any(|c| c.key == o.as_str()))
    {
        let keys: Vec<&str> = contenders.iter().map(|c| c.key).collect();
        return Err(anyhow!(
            "--only: no row `{unknown}` (the rows are {})",
            keys.join(", ")
        ));
    }
    contenders.retain(|c| only.is_empty() || only.iter().any(|o| o == c.key));
    let frozen = Contender::new("frozen", "frozen kernels (baseline)", Strategy::Frozen);
    let run_here = |c: &Contender, steps: u64| -> anyhow::Result<Summary> {
        let spec = DeviceSpec {
            simulate: simulate.map(str::to_string),
            ..DeviceSpec::cpu(mode)
        };
        // Each run on the one CPU device: later runs find its arenas and templates ready.
        let OpenDevice { device, clock, .. } = spec.decorate(base.clone())?;
        let options = TrainOptions {
            steps,
            eval_every: steps,
            delay_compensation: c.compensation,
            weight_prediction: c.prediction,
            ..options.clone()
        };
        let mut data: Box<dyn WindowSource> = match &corpus {
            Some(d) => Box::new(DatasetWindows::new(d.dataset.clone(), options.seed)?),
            None => Box::new(SyntheticWindows {
                vocab: config.vocab as u64,
                state: options.seed,
            }),
        };
        measured_run(
            &config,
            &options,
            c.strategy,
            max_staleness,
            &*device,
            &*clock,
            &mut *data,
        )
    };
    println!(
        "bench weights: {} for {steps} steps of {} window(s) (seed {}, peak lr {}), data: {}, device: CPU {mode}{}",
        config.name,
        options.accum,
        options.seed,
        options.lr,
        if corpus.is_some() {
            "the embedded corpus"
        } else {
            "synthetic tokens"
        },
        simulate.map_or(String::new(), |c| format!(
            " behind the {c} latency model [simulated]"
        ))
    );
    let run = |c: &Contender| run_here(c, steps);
    // The process's first run pays for what later runs find ready (the device's arenas and
    // program cache, the allocator's heap): not counted, or it would slow the first baseline
    // and flatter every strategy measured against it.
    if simulate.is_none() {
        run_here(&frozen, steps.min(20))?;
    }
    // Every round opens and closes with frozen kernels, and each ratio is taken against the
    // mean of the two, so that a machine whose other tenants come or go during the round
    // favours no strategy; how far the two disagree is the noise the ratios carry.
    let mut brackets: Vec<(Summary, Summary)> = Vec::new();
    let mut runs: Vec<Vec<Summary>> = contenders.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds.max(1) {
        let before = run(&frozen)?;
        for (c, runs) in contenders.iter().zip(&mut runs) {
            runs.push(run(c)?);
        }
        brackets.push((before, run(&frozen)?));
    }
    if simulate.is_none() {
        let (cold, cached) = compile_times(&config, &cpu)?;
        println!(
            "\nCPU compile of one kernel set ({} kernels), median of 5: {cold:.2} ms from scratch \
             (programs generated and lowered), {cached:.2} ms in a run (new weights only)",
            KernelSet::kernel_count(&config)
        );
    }
    println!();
    println!(
        "{:<30} {:>9} {:>13} {:>10} {:>9} {:>8} {:>8} {:>8} {:>12} {:>10} {:>10} {:>9}",
        "strategy",
        "ms/step",
        "(min-max)",
        "vs frozen",
        "by median",
        "stall %",
        "stall* %",
        "bg cpu",
        "lag mean/max",
        "compiles",
        "train loss",
        "val loss"
    );
    let ms = |r: &Summary| 1e3 * r.wall.as_secs_f64() / steps as f64;
    // A step's time is the median of the run's: other tenants of a shared machine slow some
    // steps for a while, which moves a run's mean but not its median. A strategy's own costs
    // are in every step (each overlaps a compile) or are counted apart (stalls).
    let step_ms = |r: &Summary| {
        let times: Vec<f64> = r.steps.iter().map(|s| s.ms).collect();
        times.get(median_index(&times)).copied().unwrap_or(f64::NAN)
    };
    let baselines: Vec<(f64, f64)> = brackets
        .iter()
        .map(|(before, after)| {
            (
                0.5 * (ms(before) + ms(after)),
                0.5 * (step_ms(before) + step_ms(after)),
            )
        })
        .collect();
    let frozen_runs: Vec<&Summary> = brackets.iter().flat_map(|(b, a)| [b, a]).collect();
    let rows = std::iter::once((&frozen, frozen_runs)).chain(
        contenders
            .iter()
            .zip(&runs)
            .map(|(c, runs)| (c, runs.iter().collect())),
    );
    for (c, runs) in rows {
        let mut times: Vec<f64> = runs.iter().map(|r| ms(r)).collect();
        let (ratios, step_ratios): (Vec<f64>, Vec<f64>) = if c.strategy == Strategy::Frozen {
            (vec![1.0], vec![1.0])
        } else {
            runs.iter()
                .zip(&baselines)
                .map(|(r, (wall, step))| (wall / ms(r), step / step_ms(r)))
                .unzip()
        };
        // The other columns come from the run of median time.
        let r = runs[median_index(&times)];
        times.sort_by(f64::total_cmp);
        let (_, later_stall_share) = r.counters.stall_after_startup();
        println!(
            "{:<30} {:>9.1} {:>13} {:>9.1}% {:>8.1}% {:>8.1} {:>8.2} {:>8.2} {:>7.2}/{:<4} {:>10} {:>10.4} {:>9}",
            c.name,
            times[times.len() / 2],
            format!("({:.1}-{:.1})", times[0], times[times.len() - 1]),
            100.0 * ratios[median_index(&ratios)],
            100.0 * step_ratios[median_index(&step_ratios)],
            100.0 * r.counters.compile_stall.as_secs_f64() / r.wall.as_secs_f64(),
            later_stall_share,
            1e3 * r.counters.background_compile_cpu.as_secs_f64() / steps as f64,
            r.mean_lag,
            r.max_lag,
            r.counters.compiles,
            r.final_train_loss,
            r.val_loss.map_or("-".into(), |v| format!("{v:.4}"))
        );
    }
    // How far the frozen runs that bracket each round disagreed: median, least, greatest.
    let drift = |time: &dyn Fn(&Summary) -> f64| {
        let mut ratios: Vec<f64> = brackets.iter().map(|(b, a)| time(b) / time(a)).collect();
        let median = ratios[median_index(&ratios)];
        ratios.sort_by(f64::total_cmp);
        [median, ratios[0], ratios[ratios.len() - 1]].map(|r| 100.0 * r)
    };
    let (wall, step) = (drift(&ms), drift(&step_ms));
    println!(
        "\nnoise: the frozen run closing a round ran at {:.1}% of the one opening it (median; \
         {:.1}-{:.1}%), by median step {:.1}% ({:.1}-{:.1}%)",
        wall[0], wall[1], wall[2], step[0], step[1], step[2]
    );
    println!(
        "\n({} round(s), each opened and closed by frozen kernels, the other strategies between; \
         ms/step: median (min-max), the first run of the process not counted; vs frozen: median \
         over rounds of the throughput as a share of the mean of the round's two frozen runs; \
         by median: the same share from each run's median step time instead of its wall time \
         (a step's time includes its stall); the other columns are from the run of median time. train loss: mean of the last 20 \
         steps; val loss: at the end; stall: foreground compile waits including the initial \
         compile; stall*: after the initial compile; bg cpu: CPU ms per step of the background \
         compiles, Linux only)",
        rounds.max(1)
    );
    Ok(())
}

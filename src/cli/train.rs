//! `anetrain train`: train a model, by default `tiny` on the embedded corpus.

use super::run_data::load_data;
use anetrain_device::trace::{Tracer, Track};
use anetrain_device::{DeviceSpec, OpenDevice};
use anetrain_model::generate::{generate, Sampler};
use anetrain_model::init::init_params;
use anetrain_model::io::atomic::write_atomic;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::checkpoint::Checkpoint;
use anetrain_train::data::DatasetWindows;
use anetrain_train::delivery::Strategy;
use anetrain_train::run::folder::{LOSS_PLOT, METRICS, REPORT};
use anetrain_train::run::plot::loss_svg;
use anetrain_train::run::restart::restart_args;
use anetrain_train::run::trace::continue_trace;
use anetrain_train::run::{EfficiencyReport, MetricsLog, MetricsRow, RunFolder, RunSettings};
use anetrain_train::trainer::{
    train, CheckpointFolder, DeliverySettings, Event, TrainError, TrainOptions, TrainOutcome,
    TrainSetup, TrainState,
};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML run configuration (model, data, tokenizer and [train] options); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model: a preset (tiny, stories15m, stories42m, stories110m, qwen3-0.6b) or a TOML file.
    #[arg(long)]
    model: Option<String>,
    /// The device the kernels run on: cpu, or ane (Apple Silicon Macs). Default: cpu.
    #[arg(long)]
    device: Option<String>,
    /// The CPU device's numbers: fp32, or fp16 as the ANE computes them (with dynamic loss
    /// scaling). Default: fp32 on the CPU; the ANE computes in fp16.
    #[arg(long, value_parser = ["fp32", "fp16"])]
    precision: Option<String>,
    /// Optimizer updates (default 4000).
    #[arg(long)]
    steps: Option<u64>,
    /// Peak learning rate, reached after the warm-up and decayed by a cosine to a tenth of it
    /// (default 0.003).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Gradient accumulation: windows per update.
    #[arg(long)]
    accum: Option<u32>,
    /// Seed of the initial weights and the data order (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// A token file (llama2.c uint16, or anetrain's uint32 format); default: the embedded corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A tokenizer.json or llama2.c tokenizer.bin; default: BPE trained on the embedded corpus.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Start from a published model instead of random weights: a llama2.c model file (.bin) or
    /// .safetensors (fine-tuning). Give its tokenizer with --tokenizer.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Continue from the newest checkpoint in --out (or from this checkpoint file).
    #[arg(long, num_args = 0..=1, default_missing_value = "auto")]
    resume: Option<String>,
    /// The run folder: checkpoints, metrics.jsonl, loss.svg, report.txt.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start a new run in a --out folder that holds one: that run's checkpoints,
    /// metrics.jsonl, loss.svg and report.txt are deleted (once everything else checks out).
    #[arg(long)]
    overwrite: bool,
    /// Threads for the CPU device and the host math (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar; only the report.
    #[arg(long)]
    quiet: bool,
    /// How new weights reach the device: recompile, double-buffer (background compile) or
    /// dynamic (weights as kernel inputs, compiled once). Default: double-buffer.
    #[arg(long = "weights", value_name = "STRATEGY")]
    strategy: Option<String>,
    /// Updates the device weights may lag the master weights (double-buffer). Default: 1.
    #[arg(long)]
    max_staleness: Option<u64>,
    /// Delay compensation for steps run on stale weights (DC-ASGD-a with λ = c/lr; default 3,
    /// 0 = off).
    #[arg(long, allow_negative_numbers = true)]
    delay_compensation: Option<f32>,
    /// Weight prediction for double-buffer: compile the weights the master is predicted to
    /// reach when the set runs, not the master weights (true/false).
    #[arg(long, value_name = "BOOL")]
    weight_prediction: Option<bool>,
    /// Model a chip's compile and eval latencies on a virtual clock (e.g. m4); every figure
    /// is then labelled simulated.
    #[arg(long)]
    simulate: Option<String>,
    /// Write a Chrome trace-event timeline (device evals, compiles, host work).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Limit compiles per process (the ANE allows about 119); the run checkpoints and
    /// re-executes itself with --resume before a kernel set would exceed it.
    #[arg(long)]
    compile_budget: Option<u64>,
    /// Stop after this many updates (with a checkpoint), though the schedule runs to --steps;
    /// `--resume` continues exactly where it stopped.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Consecutive failed background compiles before the run checkpoints and stops. Default: 3.
    #[arg(long)]
    max_compile_failures: Option<u32>,
}

/// The TOML run configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunConfig {
    model: Option<String>,
    device: Option<String>,
    precision: Option<String>,
    data: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    out: Option<PathBuf>,
    weights: Option<String>,
    /// `TrainOptions` keys; read over a resumed run's own.
    #[serde(default)]
    train: Option<toml::Table>,
}

/// The run's options: a resumed run's own (the schedule, optimizer, evaluation and
/// correction it was started with; not its thread count, which is the machine's), then the
/// config file's `[train]` keys over them, then the flags.
fn run_options(
    saved: Option<&TrainOptions>,
    file: Option<toml::Table>,
    file_path: Option<&std::path::Path>,
    args: &TrainArgs,
) -> anyhow::Result<TrainOptions> {
    let mut value = match saved {
        Some(saved) => serde_json::to_value(saved)?,
        None => serde_json::Value::Object(Default::default()),
    };
    if let Some(saved) = value.as_object_mut() {
        saved.remove("threads");
    }
    let source = match file_path {
        Some(p) => format!("[train] in {}", p.display()),
        None => "the checkpoint's options".into(),
    };
    if let Some(table) = file {
        merge_json(&mut value, serde_json::to_value(table)?);
    }
    let mut options: TrainOptions =
        serde_json::from_value(value).map_err(|e| anyhow!("{source}: {e}"))?;
    if let Some(v) = args.steps {
        options.steps = v;
    }
    if let Some(v) = args.lr {
        options.lr = v;
    }
    if let Some(v) = args.accum {
        options.accum = v;
    }
    if let Some(v) = args.seed {
        options.seed = v;
    }
    if let Some(v) = args.threads {
        options.threads = v;
    }
    if let Some(v) = args.delay_compensation {
        options.delay_compensation = v;
    }
    if let Some(v) = args.weight_prediction {
        options.weight_prediction = v;
    }
    Ok(options)
}

/// `over` written onto `base`: objects key by key, anything else replaced.
fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (key, value) in over {
                merge_json(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (base, over) => *base = over,
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let file: RunConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?
        }
        None => RunConfig::default(),
    };
    let model_name = args
        .model
        .clone()
        .or(file.model)
        .unwrap_or_else(|| "tiny".into());
    let folder = RunFolder::new(
        args.out
            .clone()
            .or(file.out)
            .unwrap_or_else(|| PathBuf::from("runs").join(model_name.trim_end_matches(".toml"))),
    );
    // Resume: the checkpoint carries config, weights, optimizer, sampler and tokenizer, and
    // how the run was started.
    let resume_from = match args.resume.as_deref() {
        None => None,
        Some("auto") => Some(folder.newest_checkpoint()?),
        Some(p) => Some(PathBuf::from(p)),
    };
    let checkpoint = match &resume_from {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    let saved_run = checkpoint
        .as_ref()
        .map_or_else(RunSettings::default, |c| RunSettings::saved_in(&c.header));
    let settings = RunSettings {
        device: args.device.clone().or(file.device),
        precision: args.precision.clone().or(file.precision),
        data: args.data.clone().or(file.data),
        weights: args.strategy.clone().or(file.weights),
        max_staleness: args.max_staleness,
        max_compile_failures: args.max_compile_failures,
    }
    .or(saved_run);
    let options = run_options(
        checkpoint.as_ref().map(|c| &c.header.options),
        file.train,
        args.config.as_deref(),
        &args,
    )?;
    // Before the data and the tokenizer are prepared (seconds), so a typo fails at once.
    options.check().map_err(TrainError::Options)?;
    let device_name = settings.device.clone().unwrap_or_else(|| "cpu".into());
    let mut device_spec = DeviceSpec {
        kind: device_name.parse()?,
        precision: settings
            .precision
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| anyhow!(e))?,
        threads: Some(options.threads),
        simulate: args.simulate.clone(),
        compile_budget: args.compile_budget,
        ..DeviceSpec::default()
    };
    let mode = device_spec
        .mode()
        .map_err(|e| anyhow!("--precision: {e}"))?;
    // The double buffer everywhere: on the ANE compiles are costly and overlap evals, and on
    // the CPU it measured faster than weights as inputs (docs/weight-delivery.md).
    let default_strategy = "double-buffer";
    let strategy: Strategy = settings
        .weights
        .clone()
        .unwrap_or_else(|| default_strategy.into())
        .parse()
        .map_err(|e: String| anyhow!(e))?;
    let continues_folder = resume_from.as_deref().is_some_and(|p| folder.holds(p));
    let earlier_run = folder.claim(continues_folder, args.overwrite)?;
    let tracer = args.trace.as_ref().map(|_| Tracer::new());
    device_spec.tracer = tracer.clone();
    let OpenDevice { device, clock, .. } = super::devices::open(&device_spec)?;

    folder.create()?;

    let initial = match (&checkpoint, &args.init) {
        (None, Some(path)) => {
            let preset = ModelConfig::named(&model_name).ok();
            Some(super::model_io::load_model_file(path, preset.as_ref())?)
        }
        _ => None,
    };
    let config = match (&checkpoint, &initial) {
        (Some(c), _) => c.header.config.clone(),
        (None, Some(p)) => p.layout.config.clone(),
        (None, None) => ModelConfig::named(&model_name)?,
    };
    let data = load_data(
        settings.data.as_deref(),
        args.tokenizer.as_deref().or(file.tokenizer.as_deref()),
        checkpoint
            .as_ref()
            .map(|c| (c.header.tokenizer_kind, c.tokenizer.as_slice())),
        &config,
        !args.quiet,
    )?;
    if data.tokenizer.vocab_size() > config.vocab {
        bail!(
            "the tokenizer has {} tokens but model `{}` has a vocabulary of {}",
            data.tokenizer.vocab_size(),
            config.name,
            config.vocab
        );
    }
    let mut windows = match &checkpoint {
        Some(c) => DatasetWindows::restore(data.dataset, &c.header.sampler)?,
        None => DatasetWindows::new(data.dataset, options.seed)?,
    };
    let mut state = match checkpoint {
        Some(c) => TrainState::from_checkpoint(c)?,
        None => {
            let params = match initial {
                Some(p) => p,
                None => init_params(Arc::new(ParamLayout::new(&config)), options.seed),
            };
            TrainState::new(params, &options, mode)
        }
    };
    let max_staleness = settings.max_staleness.unwrap_or(1);
    let max_failures = settings.max_compile_failures.unwrap_or(3);
    let checkpoints = CheckpointFolder {
        dir: folder.path().to_path_buf(),
        tokenizer_kind: data.tokenizer_kind,
        tokenizer: data.tokenizer_bytes.clone(),
        run: RunSettings {
            device: Some(device_name.clone()),
            precision: Some(mode.to_string()),
            data: match &settings.data {
                Some(p) => Some(
                    std::fs::canonicalize(p)
                        .with_context(|| format!("cannot find {}", p.display()))?,
                ),
                None => None,
            },
            weights: Some(strategy.name().to_string()),
            max_staleness: Some(max_staleness),
            max_compile_failures: Some(max_failures),
        },
    };

    let params_count = state.params.data.len();
    if !args.quiet {
        println!(
            "training {} ({:.2}M parameters) on {} ({}), {} tokens ({} for validation), {} steps of {}×{} tokens",
            config.name,
            params_count as f64 / 1e6,
            device.info().name,
            mode,
            windows.dataset().tokens().len(),
            windows.dataset().val_len(),
            options.steps,
            options.accum,
            config.seq_len
        );
    }
    earlier_run.delete()?;
    let metrics_path = folder.file(METRICS);
    // A resumed run's plot covers the whole run, and its metrics hold each step once.
    let mut metrics = if continues_folder {
        MetricsLog::resume(&metrics_path, state.step)?
    } else {
        MetricsLog::create(&metrics_path)?
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(options.steps);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(state.step);
        b
    };
    let mut on_event = |e: &Event| {
        match e {
            Event::Step(r) => {
                if let Some(t) = &tracer {
                    let start = Duration::from_secs_f64(r.start_s);
                    let end = start + Duration::from_secs_f64(r.ms / 1e3);
                    t.record(Track::Host, &format!("step {}", r.step), start, end);
                }
                bar.set_position(r.step);
                bar.set_message(format!("loss {:.3}  {:.0} tok/s", r.loss, r.tokens_per_s));
            }
            Event::Validation { step, loss, .. } => print_above_bar(
                &bar,
                args.quiet,
                format!("step {step}: validation loss {loss:.4}"),
            ),
            Event::CompileFailed(message) => bar.println(format!(
                "warning: {message}; the active kernels stay in place"
            )),
            Event::HostWork { name, start, end } => {
                // For the timeline only: the step rows carry the times.
                if let Some(t) = &tracer {
                    t.record(Track::Host, name, *start, *end);
                }
            }
            Event::Compiled { .. } | Event::Checkpoint { .. } => {}
        }
        if let Some(row) = MetricsRow::of(e) {
            metrics.append(&row);
        }
    };
    let setup = TrainSetup {
        device: &*device,
        clock: &*clock,
        delivery: DeliverySettings {
            strategy,
            max_staleness,
            max_failures,
        },
        simulate_host_time: true,
        stop_after: args.stop_after,
    };
    let outcome = train(
        &setup,
        &options,
        &mut state,
        &mut windows,
        Some(&checkpoints),
        &mut on_event,
    );
    bar.finish_and_clear();
    if let (Some(path), Some(t)) = (&args.trace, &tracer) {
        // A resumed run (a budget restart among them) continues the timeline it finds.
        let earlier = match &resume_from {
            Some(_) => std::fs::read(path).ok(),
            None => None,
        };
        let json = continue_trace(earlier.as_deref(), &t.to_json())
            .with_context(|| format!("cannot continue the trace in {}", path.display()))?;
        write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let TrainOutcome::Restart { step, checkpoint } = outcome? {
        if !args.quiet {
            println!(
                "compile budget spent after step {step}: restarting from {}",
                checkpoint.display()
            );
        }
        return restart_with(&checkpoint);
    }
    metrics.finish()?;
    let curves = metrics.curves();
    let svg = loss_svg(&format!("{} loss", config.name), &curves.train, &curves.val);
    let plot = folder.file(LOSS_PLOT);
    write_atomic(&plot, svg.as_bytes())
        .with_context(|| format!("cannot write {}", plot.display()))?;

    let report = EfficiencyReport::new(&state, &options, &*device, mode, strategy).to_string();
    let report_path = folder.file(REPORT);
    write_atomic(&report_path, report.as_bytes())
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    println!("{report}");
    let prompt = data
        .tokenizer
        .encode("It is a truth universally acknowledged")?;
    let mut sampler = Sampler::new(0.8, 0.9, options.seed).within(data.tokenizer.vocab_size());
    let sample = generate(&state.params, &prompt, 60, &mut sampler);
    let mut text = prompt.clone();
    text.extend(sample);
    println!(
        "sample: {}",
        data.tokenizer.decode(&text)?.replace('\n', " ")
    );
    println!("run folder: {}", folder.path().display());
    Ok(())
}

/// Prints a line above the progress bar, or plainly where there is no bar (not a terminal).
fn print_above_bar(bar: &ProgressBar, quiet: bool, line: String) {
    if quiet {
        return;
    }
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Re-executes this program to continue the run from `checkpoint`: a fresh process has a
/// fresh compile budget.
fn restart_with(checkpoint: &Path) -> anyhow::Result<()> {
    let exe =
        std::env::current_exe().context("cannot find the running executable to restart it")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(restart_args(std::env::args_os().skip(1), checkpoint));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(anyhow!("cannot restart: {err}"))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().context("cannot restart")?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

//! `anetrain train`: train a model, by default `tiny` on the embedded corpus.

use super::plot::loss_svg;
use super::run_data::load_data;
use anetrain_device::cpu::best_fma_peak;
use anetrain_device::trace::{Tracer, Track};
use anetrain_device::{Device, DeviceSpec, NumericMode, OpenDevice};
use anetrain_model::generate::{generate, Sampler};
use anetrain_model::init::init_params;
use anetrain_model::io::atomic::write_atomic;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::checkpoint::{list_checkpoints, Checkpoint, CheckpointHeader};
use anetrain_train::data::DatasetWindows;
use anetrain_train::delivery::Strategy;
use anetrain_train::trainer::{
    train, CheckpointSink, Event, RunEnv, TrainError, TrainOptions, TrainState,
};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Write;
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

/// How a run was started besides its model, its tokenizer and its `TrainOptions`: kept in its
/// checkpoints so that `--resume` continues the run as it was. A flag or config-file setting
/// given again overrides it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct RunSettings {
    device: Option<String>,
    precision: Option<String>,
    /// Saved as an absolute path, so that a run resumes from any directory.
    data: Option<PathBuf>,
    weights: Option<String>,
    max_staleness: Option<u64>,
    max_compile_failures: Option<u32>,
}

impl RunSettings {
    /// How the run a checkpoint comes from was started (nothing, for a checkpoint written
    /// before checkpoints kept it).
    fn saved_in(header: &CheckpointHeader) -> RunSettings {
        serde_json::from_value(header.run.clone()).unwrap_or_default()
    }

    /// These settings, each missing one taken from `saved`.
    fn or(self, saved: RunSettings) -> RunSettings {
        RunSettings {
            device: self.device.or(saved.device),
            precision: self.precision.or(saved.precision),
            data: self.data.or(saved.data),
            weights: self.weights.or(saved.weights),
            max_staleness: self.max_staleness.or(saved.max_staleness),
            max_compile_failures: self.max_compile_failures.or(saved.max_compile_failures),
        }
    }
}

/// The token file a checkpoint's run trained on, when it was not the embedded corpus.
pub fn trained_on(header: &CheckpointHeader) -> Option<PathBuf> {
    RunSettings::saved_in(header).data
}

/// The run's options: a resumed run's own (the schedule, optimizer, evaluation and
/// correction it was started with; not its thread count, which is the machine's), then the
/// config file's `[train]` keys over them, then the flags.
fn run_options(
    saved: Option<&serde_json::Value>,
    file: Option<toml::Table>,
    file_path: Option<&std::path::Path>,
    args: &TrainArgs,
) -> anyhow::Result<TrainOptions> {
    let mut value = saved
        .cloned()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
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
    let out = args
        .out
        .clone()
        .or(file.out)
        .unwrap_or_else(|| PathBuf::from("runs").join(model_name.trim_end_matches(".toml")));
    // Resume: the checkpoint carries config, weights, optimizer, sampler and tokenizer, and
    // how the run was started.
    let resume_from = match args.resume.as_deref() {
        None => None,
        Some("auto") => Some(
            list_checkpoints(&out)
                .pop()
                .map(|(_, p)| p)
                .ok_or_else(|| anyhow!("--resume: no checkpoint in {}", out.display()))?,
        ),
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
    // The double buffer everywhere. On the ANE compiles are costly and overlap evals. On the
    // CPU a compile shares the cores with the evals, but at idle priority it still costs less
    // than weights as inputs: 1000 default steps at 16.9–17.7 ms against 20.0–20.3 ms (runs
    // alternated), and after 4000 the validation loss is within 0.4 % of recompile's with the
    // delay compensation (`bench weights` measures every strategy side by side).
    let default_strategy = "double-buffer";
    let strategy: Strategy = settings
        .weights
        .clone()
        .unwrap_or_else(|| default_strategy.into())
        .parse()
        .map_err(|e: String| anyhow!(e))?;
    // A run must not mix its files with another run's: checkpoint rotation would keep the
    // other run's newer steps and delete this run's, `--resume` would pick the wrong run, and
    // metrics.jsonl would hold both. Continuing the run the folder holds is the one exception.
    let continues_folder = resume_from
        .as_deref()
        .is_some_and(|p| same_dir(p.parent(), &out));
    if continues_folder && args.overwrite {
        bail!("--overwrite would delete the run that --resume continues");
    }
    let earlier_run = if continues_folder {
        Vec::new()
    } else {
        run_files(&out)
    };
    if !earlier_run.is_empty() && !args.overwrite {
        let newest = list_checkpoints(&out)
            .pop()
            .map_or(String::new(), |(step, _)| {
                format!(", its newest checkpoint at step {step}")
            });
        bail!(
            "{} holds a run already ({} file(s){newest}): continue it with --resume, start \
             over with --overwrite (deletes them), or choose another --out",
            out.display(),
            earlier_run.len()
        );
    }
    let tracer = args.trace.as_ref().map(|_| Tracer::new());
    device_spec.tracer = tracer.clone();
    let OpenDevice { device, clock, .. } = super::devices::open(&device_spec)?;

    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

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
            .map(|c| (c.header.tokenizer_kind.as_str(), c.tokenizer.as_slice())),
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
    let sink = CheckpointSink {
        dir: out.clone(),
        tokenizer_kind: data.tokenizer_kind.clone(),
        tokenizer: data.tokenizer_bytes.clone(),
        run: serde_json::to_value(RunSettings {
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
        })?,
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
    for file in &earlier_run {
        std::fs::remove_file(file)
            .with_context(|| format!("--overwrite: cannot delete {}", file.display()))?;
    }
    let metrics_path = out.join("metrics.jsonl");
    // A resumed run's plot covers the whole run, and its metrics hold each step once.
    let (mut train_points, mut val_points) = if continues_folder {
        resume_metrics(&metrics_path, state.step)?
    } else {
        (Vec::new(), Vec::new())
    };
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("cannot open {}", metrics_path.display()))?;
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
    let mut write_error = None;
    let mut on_event = |e: &Event| {
        let line = match e {
            Event::Step(r) => {
                train_points.push((r.step, r.loss));
                if let Some(t) = &tracer {
                    let start = Duration::from_secs_f64(r.start_s);
                    let end = start + Duration::from_secs_f64(r.ms / 1e3);
                    t.record(Track::Host, &format!("step {}", r.step), start, end);
                }
                bar.set_position(r.step);
                bar.set_message(format!("loss {:.3}  {:.0} tok/s", r.loss, r.tokens_per_s));
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["type"] = "step".into();
                v
            }
            Event::Validation {
                step,
                loss,
                weights_version,
            } => {
                val_points.push((*step, *loss));
                say(
                    &bar,
                    args.quiet,
                    format!("step {step}: validation loss {loss:.4}"),
                );
                serde_json::json!({"type": "val", "step": step, "val_loss": loss, "weights_version": weights_version})
            }
            Event::Compiled { kernels, took } => {
                serde_json::json!({"type": "compile", "kernels": kernels, "ms": took.as_secs_f64() * 1e3})
            }
            Event::CompileFailed(message) => {
                bar.println(format!(
                    "warning: {message}; the active kernels stay in place"
                ));
                serde_json::json!({"type": "compile_failed", "message": message})
            }
            Event::Checkpoint { step, path } => {
                serde_json::json!({"type": "checkpoint", "step": step, "path": path.display().to_string()})
            }
            Event::HostWork { name, start, end } => {
                // For the timeline only: the step rows carry the times.
                if let Some(t) = &tracer {
                    t.record(Track::Host, name, *start, *end);
                }
                return;
            }
        };
        if let Err(err) = writeln!(metrics, "{line}") {
            write_error.get_or_insert(err);
        }
    };
    let env = RunEnv {
        device: &*device,
        clock: &*clock,
        strategy,
        max_staleness,
        max_failures,
        count_host_time: true,
        stop_after: args.stop_after,
    };
    let outcome = train(
        &env,
        &options,
        &mut state,
        &mut windows,
        Some(&sink),
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
    match outcome {
        Err(TrainError::Restart { step, checkpoint }) => {
            if !args.quiet {
                println!(
                    "compile budget spent after step {step}: restarting from {}",
                    checkpoint.display()
                );
            }
            return restart_with(&checkpoint);
        }
        other => other?,
    }
    if let Some(e) = write_error {
        bail!("writing {}: {e}", metrics_path.display());
    }
    let svg = loss_svg(&format!("{} loss", config.name), &train_points, &val_points);
    write_atomic(&out.join("loss.svg"), svg.as_bytes())
        .with_context(|| format!("cannot write {}", out.join("loss.svg").display()))?;

    let report = efficiency_report(&state, &options, &*device, mode, strategy);
    write_atomic(&out.join("report.txt"), report.as_bytes())
        .with_context(|| format!("cannot write {}", out.join("report.txt").display()))?;
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
    println!("run folder: {}", out.display());
    Ok(())
}

/// Prints a line above the progress bar, or plainly where there is no bar (not a terminal).
fn say(bar: &ProgressBar, quiet: bool, line: String) {
    if quiet {
        return;
    }
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Whether `dir` (a checkpoint's folder; none for a bare file name) is the folder `out`.
fn same_dir(dir: Option<&Path>, out: &Path) -> bool {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (dir.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Loss and validation points of a run's metrics.
type Points = Vec<(u64, f32)>;

/// The metrics a run resumed at `step` keeps: every row up to the first of a later step.
/// Those later rows were written by a process that stopped after its last checkpoint, and the
/// resumed run computes their steps again, so they are cut from metrics.jsonl (atomically;
/// a line torn by a crash goes with them). Returns the kept losses and validation losses.
fn resume_metrics(path: &Path, step: u64) -> anyhow::Result<(Points, Points)> {
    // Bytes, not text: a crash can tear a line inside a character.
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let mut kept = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let Ok(row) = serde_json::from_slice::<serde_json::Value>(line) else {
            break;
        };
        let row_step = row["step"].as_u64();
        if row_step.is_some_and(|s| s > step) {
            break;
        }
        let loss = |key: &str| row[key].as_f64().map(|v| v as f32);
        match (row["type"].as_str(), row_step) {
            (Some("step"), Some(s)) => train.extend(loss("loss").map(|l| (s, l))),
            (Some("val"), Some(s)) => val.extend(loss("val_loss").map(|l| (s, l))),
            _ => {}
        }
        kept += line.len();
    }
    if kept < text.len() {
        write_atomic(path, &text[..kept])
            .with_context(|| format!("cannot rewrite {}", path.display()))?;
    }
    Ok((train, val))
}

/// The files a run left in its folder (checkpoints, metrics.jsonl, loss.svg, report.txt). An
/// empty metrics.jsonl is what a run refused before its first compile leaves: not a run.
fn run_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = list_checkpoints(out).into_iter().map(|(_, p)| p).collect();
    files.extend(
        ["metrics.jsonl", "loss.svg", "report.txt"]
            .iter()
            .map(|name| out.join(name))
            .filter(|p| p.metadata().is_ok_and(|m| m.len() > 0)),
    );
    files
}

/// A trace-event JSON: `new`'s spans after `earlier`'s (shifted to start where the earlier
/// ones end, each process's clock starting at zero), or `new` alone.
fn continue_trace(earlier: Option<&[u8]>, new: &str) -> anyhow::Result<String> {
    let Some(earlier) = earlier else {
        return Ok(new.to_string());
    };
    let Ok(mut earlier) = serde_json::from_slice::<serde_json::Value>(earlier) else {
        // Not a trace (or not one of ours): start a new one rather than fail the run.
        return Ok(new.to_string());
    };
    let mut new: serde_json::Value = serde_json::from_str(new)?;
    let Some(events) = earlier["traceEvents"].as_array_mut() else {
        return Ok(new.to_string());
    };
    let end = events
        .iter()
        .filter(|e| e["ph"] == "X")
        .filter_map(|e| Some(e["ts"].as_f64()? + e["dur"].as_f64()?))
        .fold(0.0, f64::max);
    let spans = new["traceEvents"].as_array_mut().map(std::mem::take);
    for mut e in spans.into_iter().flatten() {
        if e["ph"] != "X" {
            continue;
        }
        if let Some(ts) = e["ts"].as_f64() {
            e["ts"] = (ts + end).into();
        }
        events.push(e);
    }
    Ok(serde_json::to_string(&earlier)?)
}

/// Re-executes this program with the same arguments (less any `--resume` and `--overwrite`)
/// and `--resume CHECKPOINT`: a fresh process has a fresh compile budget.
fn restart_with(checkpoint: &std::path::Path) -> anyhow::Result<()> {
    let exe =
        std::env::current_exe().context("cannot find the running executable to restart it")?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut skip_value = false;
    for a in std::env::args_os().skip(1) {
        if skip_value {
            skip_value = false;
            if !a.to_string_lossy().starts_with("--") {
                continue;
            }
        }
        if a == "--resume" {
            skip_value = true;
            continue;
        }
        if a.to_string_lossy().starts_with("--resume=") {
            continue;
        }
        // The new process continues this run, which an --overwrite has already started over.
        if a == "--overwrite" {
            continue;
        }
        args.push(a);
    }
    args.push("--resume".into());
    args.push(checkpoint.as_os_str().to_owned());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args);
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

fn efficiency_report(
    state: &TrainState,
    options: &TrainOptions,
    device: &dyn Device,
    mode: NumericMode,
    strategy: Strategy,
) -> String {
    let c = &state.counters;
    let info = device.info();
    let steps = state.step.max(1) as f64;
    let wall = c.wall.as_secs_f64();
    let windows = steps * options.accum.max(1) as f64;
    let total_flops = state.config.train_flops_per_window() * windows;
    let device_flops = state.config.device_flops_per_window() * windows;
    let train_s = c.train.as_secs_f64().max(1e-9);
    let pct = |part: Duration| 100.0 * part.as_secs_f64() / wall.max(1e-9);
    let sim = if info.simulated { " [simulated]" } else { "" };
    let mut r = String::new();
    let mut line = |s: String| {
        r.push_str(&s);
        r.push('\n');
    };
    line(format!("=== Efficiency report{sim} ==="));
    line(format!("device              {} ({mode}){sim}", info.name));
    line(format!("weight delivery     {}", strategy.name()));
    line(format!("steps               {}", state.step));
    line(format!("wall time           {:.2} s", wall));
    line(format!(
        "compile stall       {:.2} s ({:.1} % of wall)",
        c.compile_stall.as_secs_f64(),
        pct(c.compile_stall)
    ));
    let (later, later_share) = c.stall_after_startup();
    line(format!(
        "  at start-up       {:.2} s (the first sets of each process; nothing to evaluate yet)",
        c.startup_compile.as_secs_f64()
    ));
    line(format!(
        "  after start-up    {:.2} s ({:.2} % of the wall time after start-up)",
        later.as_secs_f64(),
        later_share
    ));
    // The CPU time is this host's whichever the clock: a latency model only adds time.
    let compile_cpu = if c.background_compile_cpu > Duration::ZERO {
        format!(
            " (CPU time {:.2} s on this host)",
            c.background_compile_cpu.as_secs_f64()
        )
    } else {
        String::new()
    };
    line(format!(
        "background compile  {:.2} s{compile_cpu}",
        c.background_compile.as_secs_f64()
    ));
    line(format!(
        "train time          {:.2} s ({:.1} % of wall)",
        train_s,
        pct(c.train)
    ));
    line(format!(
        "  device eval       {:.2} s",
        c.device_eval.as_secs_f64()
    ));
    line(format!(
        "  host math         {:.2} s",
        c.host_math.as_secs_f64()
    ));
    line(format!(
        "  weight gradients  {:.2} s (alongside the evals; the steps waited {:.2} s for them)",
        c.weight_grads.as_secs_f64(),
        c.weight_grad_wait.as_secs_f64()
    ));
    line(format!(
        "optimizer           {:.2} s",
        c.optimizer.as_secs_f64()
    ));
    if c.staging > Duration::ZERO {
        line(format!(
            "weight staging      {:.2} s (dynamic: weights copied into kernel inputs)",
            c.staging.as_secs_f64()
        ));
    }
    line(format!(
        "ms/step             {:.1} (train only {:.1})",
        1e3 * wall / steps,
        1e3 * train_s / steps
    ));
    line(format!(
        "tokens/s            {:.0}",
        c.tokens as f64 / wall.max(1e-9)
    ));
    line(format!(
        "device eval         {:.3} TFLOPS",
        device_flops / c.device_eval.as_secs_f64().max(1e-9) / 1e12
    ));
    line(format!(
        "total               {:.3} TFLOPS in train time (model FLOPs: 3× forward matmuls)",
        total_flops / train_s / 1e12
    ));
    if info.kind == "cpu" && !info.simulated {
        let peak = best_fma_peak(options.threads, 3, Duration::from_millis(100));
        line(format!(
            "MFU                 {:.1} % of the measured FP32 peak ({:.0} GFLOPS, FMA loop)",
            100.0 * total_flops / train_s / peak,
            peak / 1e9
        ));
    }
    let budget = device.compile_budget().map_or("no limit".to_string(), |b| {
        format!("{} of {} in this process", b.used, b.budget)
    });
    line(format!(
        "compiles            {} in the run; budget: {budget}",
        c.compiles
    ));
    line(format!(
        "swaps               {}   failed compiles {}",
        c.swaps, c.failed_compiles
    ));
    let hist: Vec<String> = c
        .staleness
        .iter()
        .map(|(lag, n)| format!("{lag}:{n}"))
        .collect();
    line(format!("staleness (lag:steps) {}", hist.join("  ")));
    if c.skipped_updates > 0 {
        line(format!(
            "skipped updates     {} (fp16 overflow)",
            c.skipped_updates
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_device::clock::{Clock, SimClock};
    use anetrain_device::decorate::{ChipProfile, CompileBudget, LatencyModel};
    use anetrain_device::CpuDevice;

    /// Every figure the issue asks the report for, from counters with round numbers: 100
    /// steps of 2 windows in 10 s, of which 2 s waiting for compiles (0.5 s at start-up).
    #[test]
    fn the_report_carries_every_figure_from_the_counters() {
        let config = ModelConfig::tiny();
        let options = TrainOptions {
            accum: 2,
            ..TrainOptions::default()
        };
        let mut state = TrainState::new(
            init_params(Arc::new(ParamLayout::new(&config)), 1),
            &options,
            NumericMode::Fp32,
        );
        state.step = 100;
        let s = Duration::from_secs_f64;
        let c = &mut state.counters;
        c.wall = s(10.0);
        c.compile_stall = s(2.0);
        c.startup_compile = s(0.5);
        c.background_compile = s(3.25);
        c.train = s(7.5);
        c.device_eval = s(4.0);
        c.host_math = s(2.0);
        c.optimizer = s(0.25);
        c.compiles = 42;
        c.swaps = 37;
        c.failed_compiles = 2;
        c.tokens = 100 * 2 * config.seq_len as u64;
        c.staleness = [(0, 60), (1, 40)].into_iter().collect();
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
        let device = CompileBudget::new(
            LatencyModel::new(
                CpuDevice::new(NumericMode::Fp32),
                ChipProfile::by_name("m4").unwrap(),
                clock,
            ),
            100,
        );
        let report = efficiency_report(
            &state,
            &options,
            &device,
            NumericMode::Fp32,
            Strategy::DoubleBuffer,
        );
        let windows = 200.0;
        let device_tflops = config.device_flops_per_window() * windows / 4.0 / 1e12;
        let total_tflops = config.train_flops_per_window() * windows / 7.5 / 1e12;
        for expected in [
            "=== Efficiency report [simulated] ===".to_string(),
            "weight delivery     double-buffer".into(),
            "wall time           10.00 s".into(),
            "compile stall       2.00 s (20.0 % of wall)".into(),
            "  at start-up       0.50 s".into(),
            // 1.5 s of the 9.5 s after start-up.
            "  after start-up    1.50 s (15.79 % of the wall time after start-up)".into(),
            "background compile  3.25 s".into(),
            "train time          7.50 s (75.0 % of wall)".into(),
            "ms/step             100.0 (train only 75.0)".into(),
            format!("tokens/s            {}", 100 * 2 * config.seq_len / 10),
            format!("device eval         {device_tflops:.3} TFLOPS"),
            format!("total               {total_tflops:.3} TFLOPS"),
            "compiles            42 in the run; budget: 0 of 100 in this process".into(),
            "swaps               37   failed compiles 2".into(),
            "staleness (lag:steps) 0:60  1:40".into(),
        ] {
            assert!(report.contains(&expected), "no `{expected}` in\n{report}");
        }
        assert!(
            report.contains("[simulated]\n"),
            "the device line is labelled"
        );
    }
}

//! `anetrain train`: train a model, by default `tiny` on the embedded corpus.

use anetrain_device::host_math::GemmLibrary;
use anetrain_train::data::examples::LongExamples;
use anetrain_train::run::restart::restart_args;
use anetrain_train::run::{
    OptionFlags, OptionsFile, ResumeFrom, Run, RunError, RunFolder, RunSettings, RunSpec,
};
use anetrain_train::trainer::{Event, TrainOutcome};
use anyhow::{anyhow, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use std::path::{Path, PathBuf};

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
    /// A token file (llama2.c uint16, or anetrain's uint32 format), or fine-tuning examples: a
    /// .jsonl file, or a folder with train.jsonl and valid.jsonl. Default: the embedded corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Fine-tuning examples: train only on completions and assistant turns.
    #[arg(long)]
    mask_prompt: bool,
    /// Fine-tuning examples: one example per window, padded, instead of packing several.
    #[arg(long)]
    no_pack: bool,
    /// Fine-tuning examples longer than the model's context: truncate (keep the start) or
    /// refuse. Default: truncate.
    #[arg(long, value_name = "WHAT")]
    long_examples: Option<LongExamples>,
    /// A tokenizer.json or llama2.c tokenizer.bin; default: BPE trained on the embedded corpus.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Start from a published model instead of random weights: a llama2.c model file (.bin) or
    /// .safetensors (fine-tuning). Give its tokenizer with --tokenizer.
    #[arg(long, conflicts_with = "resume")]
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
    /// The library of the host's matrix products: cblas (Accelerate on a Mac, OpenBLAS in a
    /// Linux build with the cblas feature) or faer. Default: cblas where built.
    #[arg(long, value_name = "LIBRARY")]
    gemm: Option<GemmLibrary>,
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
    mask_prompt: Option<bool>,
    pack: Option<bool>,
    long_examples: Option<LongExamples>,
    /// `TrainOptions` keys; read over a resumed run's own.
    #[serde(default)]
    train: Option<toml::Table>,
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
    let spec = run_spec(&args, file)?;
    let quiet = args.quiet;
    let mut run = Run::open(&spec, &mut |line| {
        if !quiet {
            println!("{line}");
        }
    })
    .map_err(flag_error)?;
    super::sample::warn_if_not_finite(&run.state.params);
    if !quiet {
        let (config, data) = (&run.state.config, run.windows.dataset());
        println!(
            "training {} ({:.2}M parameters) on {} ({}), {}, {} steps of {}×{} tokens",
            config.name,
            run.state.params.data.len() as f64 / 1e6,
            run.device.device.info().name,
            run.device.mode,
            data.describe(),
            run.options.steps,
            run.options.accum,
            config.seq_len
        );
    }
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(run.options.steps);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(run.state.step);
        b
    };
    let outcome = run.train(&mut |e| match e {
        Event::Step(r) => {
            bar.set_position(r.step);
            bar.set_message(format!("loss {:.3}  {:.0} tok/s", r.loss, r.tokens_per_s));
        }
        Event::Validation { step, loss, .. } => print_above_bar(
            &bar,
            quiet,
            format!("step {step}: validation loss {loss:.4}"),
        ),
        Event::CompileFailed(message) => bar.println(format!(
            "warning: {message}; the active kernels stay in place"
        )),
        _ => {}
    });
    bar.finish_and_clear();
    if let TrainOutcome::Restart {
        step,
        checkpoint,
        reason,
    } = outcome?
    {
        if !quiet {
            println!(
                "{reason} after step {step}: restarting from {}",
                checkpoint.display()
            );
        }
        return restart_with(&checkpoint);
    }
    let report = run.finish()?;
    println!("{report}");
    let sample = run.sample("It is a truth universally acknowledged", 60)?;
    println!("sample: {}", sample.replace('\n', " "));
    println!("run folder: {}", run.folder.path().display());
    Ok(())
}

/// The first key, dotted (`adam.eps`), whose value is a float that is not finite, in a table
/// and the tables and arrays inside it.
fn non_finite_float(table: &toml::Table) -> Option<(String, f64)> {
    fn find(key: String, value: &toml::Value) -> Option<(String, f64)> {
        match value {
            toml::Value::Float(f) if !f.is_finite() => Some((key, *f)),
            toml::Value::Table(t) => t.iter().find_map(|(k, v)| find(format!("{key}.{k}"), v)),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, v)| find(format!("{key}[{i}]"), v)),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| find(k.clone(), v))
}

/// The run the flags and the config file ask for (flags first).
fn run_spec(args: &TrainArgs, file: RunConfig) -> anyhow::Result<RunSpec> {
    let model = args.model.clone().or(file.model);
    let out = args.out.clone().or(file.out).unwrap_or_else(|| {
        let name = model.as_deref().unwrap_or("tiny");
        PathBuf::from("runs").join(name.trim_end_matches(".toml"))
    });
    let options_file = match (file.train, &args.config) {
        (Some(table), Some(path)) => {
            let source = format!("[train] in {}", path.display());
            // JSON, which the options pass through, has no NaN or infinity: it would make
            // them null and the error a riddle.
            if let Some((key, value)) = non_finite_float(&table) {
                anyhow::bail!("{source}: {key} = {value} is not a finite number");
            }
            Some(OptionsFile {
                keys: serde_json::to_value(table)?,
                source,
            })
        }
        _ => None,
    };
    Ok(RunSpec {
        model,
        folder: RunFolder::new(out),
        init: args.init.clone(),
        resume: args.resume.as_deref().map(|r| match r {
            "auto" => ResumeFrom::Newest,
            path => ResumeFrom::Checkpoint(PathBuf::from(path)),
        }),
        overwrite: args.overwrite,
        settings: RunSettings {
            device: args.device.clone().or(file.device),
            precision: args.precision.clone().or(file.precision),
            data: args.data.clone().or(file.data),
            weights: args.strategy.clone().or(file.weights),
            max_staleness: args.max_staleness,
            max_compile_failures: args.max_compile_failures,
            mask_prompt: args.mask_prompt.then_some(true).or(file.mask_prompt),
            pack: args.no_pack.then_some(false).or(file.pack),
            long_examples: args.long_examples.or(file.long_examples),
        },
        tokenizer: args.tokenizer.clone().or(file.tokenizer),
        options_file,
        option_flags: OptionFlags {
            steps: args.steps,
            lr: args.lr,
            accum: args.accum,
            seed: args.seed,
            threads: args.threads,
            delay_compensation: args.delay_compensation,
            weight_prediction: args.weight_prediction,
            gemm: args.gemm,
        },
        simulate: args.simulate.clone(),
        compile_budget: args.compile_budget,
        trace: args.trace.clone(),
        stop_after: args.stop_after,
    })
}

/// A run's error, naming the flag a device error comes from.
fn flag_error(e: RunError) -> anyhow::Error {
    match e {
        RunError::Device(e) => super::devices::flag_error(e),
        e => e.into(),
    }
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

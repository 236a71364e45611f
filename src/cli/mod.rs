//! The command line: thin subcommands over the layers.

mod bench;
mod bench_train;
mod data;
pub mod devices;
mod mil;
mod model_io;
mod parity;
mod peak;
mod probe;
pub mod report;
mod sample;
mod tokenizer;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "anetrain",
    version,
    about = "Train transformer language models on Apple's Neural Engine, and on any CPU with the same MIL kernels"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (by default `tiny` on the embedded corpus).
    Train(Box<train::TrainArgs>),
    /// Generate text from a checkpoint.
    Generate(sample::GenerateArgs),
    /// Mean loss and perplexity of a checkpoint on a token file.
    Eval(sample::EvalArgs),
    /// Write a checkpoint's weights as a llama2.c model file or safetensors.
    Export(model_io::ExportArgs),
    /// Check, format and run MIL programs.
    #[command(subcommand)]
    Mil(mil::MilCommand),
    /// Performance benchmarks, measured side by side in one run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Measure compile and eval on a device: throughput, ping-pong, sequential and background
    /// compiles, kernels loaded at once.
    Probe(probe::ProbeArgs),
    /// The peak-throughput sweep: chains of 1x1 convs, TFLOPS against the device's peak.
    Peak(peak::PeakArgs),
    /// Train tokenizers.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Prepare and inspect token files.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// List the devices of this machine: the CPU, and the ANE or why it is unavailable.
    Devices,
    /// The kernel parity suite: each case on the CPU device in fp32 and fp16 against a naive
    /// f64 reference, and on the ANE against the CPU's fp16 result.
    Parity(parity::ParityArgs),
    /// A field report for a first run on a Mac: the machine and its ANE, the parity suite, the
    /// probe, the peak sweep and a short training run per delivery strategy on each device,
    /// as report.json and report.md.
    Report(report::ReportArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Generate(args) => sample::run_generate(args),
        Command::Eval(args) => sample::run_eval(args),
        Command::Export(args) => model_io::run_export(args),
        Command::Mil(cmd) => mil::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Probe(args) => probe::run(args),
        Command::Peak(args) => peak::run(args),
        Command::Tokenizer(cmd) => tokenizer::run(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Devices => devices::run(),
        Command::Parity(args) => parity::run(args),
        Command::Report(args) => report::run(args),
    }
}

/// Whether `a` and `b` name the same file (`b` may not exist yet): a command must not write
/// its output over its own input.
pub(crate) fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    let canonical = |p: &std::path::Path| {
        p.canonicalize().ok().or_else(|| {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    matches!((canonical(a), canonical(b)), (Some(a), Some(b)) if a == b)
}

/// What the binary prints for a failed command: the error and its causes, each cause left out
/// where the text before it already says it (many of the layers' errors put their cause into
/// their own message, which anyhow's `{:#}` would then print twice).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        // The data layer's error says its cause in its message and also chains it.
        let embedded: anyhow::Error = anetrain_train::data::DataError::Read {
            path: "t.bin".into(),
            source: io,
        }
        .into();
        assert_eq!(
            error_text(&embedded),
            "cannot read token file t.bin: no such file"
        );
        // A context adds its own words in front; a cause not yet said is still appended.
        let layered = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing metrics.jsonl")
            .context("run folder runs/a")
            .unwrap_err();
        assert_eq!(
            error_text(&layered),
            "run folder runs/a: writing metrics.jsonl: disk full"
        );
    }
}

//! The command line: thin subcommands over the layers.

mod bench;
mod mil;
mod peak;
mod probe;

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
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mil(cmd) => mil::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Probe(args) => probe::run(args),
        Command::Peak(args) => peak::run(args),
    }
}

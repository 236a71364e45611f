//! The command line: thin subcommands over the layers.

mod bench;
mod mil;

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
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mil(cmd) => mil::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

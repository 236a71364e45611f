//! The command line: thin subcommands over the layers.

pub mod devices;
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
    /// List the devices of this machine: the CPU, and the ANE or why it is unavailable.
    Devices,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mil(cmd) => mil::run(cmd),
        Command::Devices => devices::run(),
    }
}

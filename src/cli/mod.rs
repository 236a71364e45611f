//! The command line: thin subcommands over the layers.

mod data;
mod mil;
mod tokenizer;

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
    /// Train tokenizers.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Prepare and inspect token files.
    #[command(subcommand)]
    Data(data::DataCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mil(cmd) => mil::run(cmd),
        Command::Tokenizer(cmd) => tokenizer::run(cmd),
        Command::Data(cmd) => data::run(cmd),
    }
}

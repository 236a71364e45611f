//! `anetrain`: train transformer language models on Apple's Neural Engine, or on any CPU with
//! the same MIL kernels.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = anetrain::cli::Cli::parse();
    match anetrain::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `anetrain export`: a checkpoint's weights as a llama2.c model file or safetensors.

use anetrain_model::io::{llama2c, safetensors};
use anetrain_train::checkpoint::Checkpoint;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// `llama2c` (run.c's model file) or `safetensors` (Hugging Face Llama names).
    #[arg(long, value_parser = ["llama2c", "safetensors"])]
    format: String,
    #[arg(long)]
    output: PathBuf,
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    if super::same_file(&args.checkpoint, &args.output) {
        anyhow::bail!(
            "--output {} is the checkpoint itself: choose another file",
            args.output.display()
        );
    }
    let ckpt = Checkpoint::load(&args.checkpoint)?;
    match args.format.as_str() {
        "llama2c" => llama2c::write(&args.output, &ckpt.params)?,
        _ => safetensors::write(&args.output, &ckpt.params)?,
    }
    println!(
        "wrote {} ({} at step {})",
        args.output.display(),
        ckpt.header.config.name,
        ckpt.header.step
    );
    Ok(())
}

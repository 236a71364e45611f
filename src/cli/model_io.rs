//! `anetrain export`, and loading published model files (llama2.c, safetensors) for sampling or
//! fine-tuning.

use anetrain_model::io::{llama2c, safetensors};
use anetrain_model::{ModelConfig, Params};
use anetrain_train::checkpoint::Checkpoint;
use anyhow::bail;
use clap::Args;
use std::path::{Path, PathBuf};

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

/// Weights from a model file: llama2.c `.bin`, or `.safetensors` (whose config comes from its
/// own metadata, else from `config`).
pub fn load_model_file(path: &Path, config: Option<&ModelConfig>) -> anyhow::Result<Params> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("bin") => Ok(llama2c::read(path)?),
        Some("safetensors") => Ok(safetensors::read(path, config)?),
        _ => bail!(
            "{}: expected a llama2.c model (.bin) or a .safetensors file",
            path.display()
        ),
    }
}

//! `anetrain export`: a checkpoint's weights as a llama2.c model file, safetensors, or a
//! Hugging Face model folder.

use anetrain_model::io::hf::{self, FolderExtras};
use anetrain_model::io::{llama2c, safetensors};
use anetrain_train::checkpoint::Checkpoint;
use anetrain_train::tokenizer::Tokenizer;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// `llama2c` (run.c's model file), `safetensors` (Hugging Face Llama names), or `hf` (a
    /// Hugging Face model folder with the tokenizer, which transformers loads as it is).
    #[arg(long, value_parser = ["llama2c", "safetensors", "hf"])]
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
        "hf" => hf::write_folder(&args.output, &ckpt.params, &folder_extras(&ckpt)?)?,
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

/// The tokenizer files of a folder export: `tokenizer.json`, and the `tokenizer_config.json`
/// the tokenizer came with or, for one without (the BPE trained here), one naming its special
/// tokens.
fn folder_extras(ckpt: &Checkpoint) -> anyhow::Result<FolderExtras> {
    let Tokenizer::HuggingFace(t) = ckpt.tokenizer()? else {
        anyhow::bail!(
            "--format hf: the checkpoint's tokenizer is a llama2.c tokenizer.bin, and a Hugging \
             Face folder needs a tokenizer.json; export --format llama2c or safetensors instead"
        );
    };
    let config = match t.config() {
        Some(c) => c.to_json(),
        None => {
            let name = |id: Option<u32>| id.and_then(|id| t.inner().id_to_token(id));
            let unk = t.inner().token_to_id("<unk>").map(|_| "<unk>");
            serde_json::to_string_pretty(&serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": name(t.bos_id()),
                "eos_token": name(t.eos_id()),
                "unk_token": unk,
                "model_max_length": ckpt.header.config.seq_len,
            }))?
        }
    };
    Ok(FolderExtras {
        files: vec![
            ("tokenizer.json".into(), ckpt.tokenizer.clone()),
            ("tokenizer_config.json".into(), config.into_bytes()),
        ],
        bos_token_id: t.bos_id(),
        eos_token_id: t.eos_id(),
        base_config: ckpt.header.base_model.as_ref().map(|b| b.config.clone()),
        base_generation_config: ckpt
            .header
            .base_model
            .as_ref()
            .and_then(|b| b.generation_config.clone()),
    })
}

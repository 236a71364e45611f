//! `anetrain generate` and `anetrain eval`: use a trained checkpoint.

use super::run_data::RandomWindows;
use anetrain_device::clock::RealClock;
use anetrain_device::{CpuDevice, NumericMode};
use anetrain_model::generate::{generate, Sampler};
use anetrain_model::step::{compile_kernel_set, StepBuffers, WeightSnapshot};
use anetrain_train::checkpoint::Checkpoint;
use anetrain_train::data::token_file::read_token_file;
use anetrain_train::tokenizer::{Tokenizer, TokenizerKind};
use anetrain_train::trainer::{validation_loss, TrainOptions, WindowSource};
use anyhow::{anyhow, bail};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// An anetrain checkpoint (weights and tokenizer).
    #[arg(long, required_unless_present = "model")]
    checkpoint: Option<PathBuf>,
    /// Or a published model file (llama2.c .bin or .safetensors) with --tokenizer.
    #[arg(long, requires = "tokenizer")]
    model: Option<PathBuf>,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 samples greedily.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// A token file; default: the validation split of the embedded corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Windows to average over.
    #[arg(long, default_value_t = 32)]
    batches: usize,
}

fn load(path: &std::path::Path) -> anyhow::Result<(Checkpoint, Tokenizer)> {
    let ckpt = Checkpoint::load(path)?;
    let tok = Tokenizer::from_bytes(
        TokenizerKind::from_name(&ckpt.header.tokenizer_kind)
            .ok_or_else(|| anyhow!("the checkpoint's tokenizer kind is unknown"))?,
        &ckpt.tokenizer,
        "the checkpoint's tokenizer",
    )?;
    Ok((ckpt, tok))
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.temperature < 0.0 {
        bail!("--top-p must be in [0, 1] and --temperature at least 0");
    }
    let (params, tok) = match (&args.checkpoint, &args.model, &args.tokenizer) {
        (Some(c), _, _) => {
            let (ckpt, tok) = load(c)?;
            (ckpt.params, tok)
        }
        (None, Some(m), Some(t)) => (
            super::model_io::load_model_file(m, None)?,
            Tokenizer::load(t)?,
        ),
        _ => bail!("give --checkpoint, or --model with --tokenizer"),
    };
    let mut prompt = tok.bos_id().into_iter().collect::<Vec<_>>();
    prompt.extend(tok.encode(&args.prompt)?);
    if prompt.is_empty() {
        prompt.push(0);
    }
    let limit = params.layout.config.seq_len;
    if prompt.len() >= limit {
        bail!(
            "the prompt has {} tokens; the model's context is {limit}",
            prompt.len()
        );
    }
    let mut sampler =
        Sampler::new(args.temperature, args.top_p, args.seed).within(tok.vocab_size());
    let out = generate(&params, &prompt, args.max_tokens, &mut sampler);
    let mut all = prompt;
    all.extend(out);
    println!("{}", tok.decode(&all)?);
    Ok(())
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let (ckpt, tok) = load(&args.checkpoint)?;
    let config = ckpt.header.config.clone();
    let (tokens, fraction) = match &args.data {
        Some(p) => (read_token_file(p, config.vocab)?.to_vec(), 1.0),
        None => (tok.encode(anetrain_train::embedded_corpus())?, 0.05),
    };
    // The validation windows of a run are the last `fraction` of its tokens; a given file is
    // evaluated whole.
    let windows = if fraction < 1.0 {
        RandomWindows::new(Arc::new(tokens), config.seq_len, fraction, 0)?
    } else {
        RandomWindows::validation_only(Arc::new(tokens), config.seq_len)?
    };
    let device = CpuDevice::new(NumericMode::Fp32);
    let clock = RealClock::new();
    let mut set = compile_kernel_set(
        &device,
        WeightSnapshot {
            version: ckpt.header.step,
            params: Arc::new(ckpt.params.clone()),
        },
    )?;
    let mut buf = StepBuffers::new(&config);
    let options = TrainOptions {
        eval_windows: args.batches.max(1),
        ..TrainOptions::default()
    };
    let n = options.eval_windows.min(windows.validation_windows());
    let loss = validation_loss(
        &device,
        &clock,
        &mut set,
        &mut buf,
        &windows,
        &options,
        config.seq_len,
    )
    .map_err(|e| anyhow!(e))?;
    println!(
        "mean loss {loss:.4} over {n} windows of {} tokens; perplexity {:.2}",
        config.seq_len,
        (loss as f64).exp()
    );
    Ok(())
}

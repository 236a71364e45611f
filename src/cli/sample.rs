//! `anetrain generate` and `anetrain eval`: use a trained checkpoint.

use anetrain_device::{DeviceSpec, NumericMode, OpenDevice};
use anetrain_model::generate::{generate, Sampler};
use anetrain_model::step::{compile_kernel_set, StepBuffers, WeightSnapshot};
use anetrain_train::checkpoint::Checkpoint;
use anetrain_train::data::examples::{ExampleEncoder, ExampleOptions, ExampleSet};
use anetrain_train::data::token_file::read_token_file;
use anetrain_train::data::TokenSplit;
use anetrain_train::data::{Dataset, ValidationSource};
use anetrain_train::run::data::corpus_dataset;
use anetrain_train::run::RunSettings;
use anetrain_train::tokenizer::Tokenizer;
use anetrain_train::trainer::{validation_loss, TrainOptions};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// An anetrain checkpoint (weights and tokenizer).
    #[arg(long, required_unless_present = "model", conflicts_with_all = ["model", "tokenizer", "config"])]
    checkpoint: Option<PathBuf>,
    /// Or a published model: a llama2.c .bin or a .safetensors file with --tokenizer, or a
    /// Hugging Face model folder (config.json, weights, tokenizer.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The model's tokenizer (tokenizer.json or llama2.c tokenizer.bin), with --model [default:
    /// a model folder's tokenizer.json].
    #[arg(long, requires = "model")]
    tokenizer: Option<PathBuf>,
    /// The shape of a --model safetensors file without anetrain's metadata (a Hugging Face
    /// Llama export): a preset or a TOML file, as `train --model` takes.
    #[arg(long, requires = "model")]
    config: Option<String>,
    /// The text to continue (after the tokenizer's BOS, where its encoding puts one).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Take --prompt as a user's message: render it with the tokenizer's chat template (or
    /// `user: …` lines without one), and print the assistant's answer, which ends at EOS or at
    /// the template's end of turn (`<|im_end|>`, `<|eot_id|>`, ...).
    #[arg(long)]
    chat: bool,
    /// Tokens to generate (fewer if the model's context ends first).
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 samples greedily.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling: draw from the most likely tokens that hold this share of the mass.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Seed of the sampler: the same seed and settings give the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// An anetrain checkpoint (weights and tokenizer).
    #[arg(long, required_unless_present = "model", conflicts_with_all = ["model", "tokenizer", "config"])]
    checkpoint: Option<PathBuf>,
    /// Or a published model, as `generate --model` takes it.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The model's tokenizer, with --model [default: a model folder's tokenizer.json].
    #[arg(long, requires = "model")]
    tokenizer: Option<PathBuf>,
    /// The shape of a --model safetensors file without anetrain's metadata.
    #[arg(long, requires = "model")]
    config: Option<String>,
    /// A token file or fine-tuning examples (a .jsonl file, or a folder: its valid.jsonl,
    /// else its train.jsonl), evaluated whole; default: the validation split of the data the
    /// checkpoint's run trained on (the embedded corpus for a --model).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Windows to average over.
    #[arg(long, default_value_t = 32)]
    batches: usize,
    /// Fine-tuning examples: score only completions and assistant turns (a checkpoint's run
    /// that masked them does so already).
    #[arg(long)]
    mask_prompt: bool,
}

fn load(path: &std::path::Path) -> anyhow::Result<(Checkpoint, Tokenizer)> {
    let ckpt = Checkpoint::load(path)?;
    let tok = ckpt.tokenizer()?;
    Ok((ckpt, tok))
}

/// A published model and its tokenizer (`--tokenizer`, else a model folder's own).
fn load_published(
    model: &std::path::Path,
    tokenizer: Option<&std::path::Path>,
    config: Option<&str>,
) -> anyhow::Result<(anetrain_model::Params, Tokenizer)> {
    let folder_tokenizer = model.is_dir().then(|| model.join("tokenizer.json"));
    let Some(t) = tokenizer.map(PathBuf::from).or(folder_tokenizer) else {
        bail!("give --checkpoint, or --model with --tokenizer (a model folder holds its own)");
    };
    let config = config.map(anetrain_model::ModelConfig::named).transpose()?;
    Ok((
        anetrain_model::io::load_model_file(model, config.as_ref())?,
        Tokenizer::load(&t)?,
    ))
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.top_p) || args.temperature.is_nan() || args.temperature < 0.0 {
        bail!("--top-p must be in [0, 1] and --temperature at least 0");
    }
    if !args.temperature.is_finite() {
        bail!("--temperature must be a finite number");
    }
    let (params, tok) = match (&args.checkpoint, &args.model, &args.tokenizer) {
        (Some(c), _, _) => {
            let (ckpt, tok) = load(c)?;
            (ckpt.params, tok)
        }
        (None, Some(m), t) => load_published(m, t.as_deref(), args.config.as_deref())?,
        _ => bail!("give --checkpoint, or --model with --tokenizer (a model folder holds its own)"),
    };
    warn_if_not_finite(&params);
    let config = &params.layout.config;
    if let Some(why) = anetrain_train::tokenizer::mismatch(&tok, config) {
        bail!(why);
    }
    let mut prompt = Vec::new();
    if args.chat {
        let encoder = ExampleEncoder::new(&tok, false)?;
        let message = serde_json::json!({"role": "user", "content": args.prompt});
        prompt = encoder.chat_prompt(&[message]).map_err(|e| anyhow!(e))?;
    } else {
        prompt.extend(tok.bos_id().filter(|_| tok.adds_bos()));
        prompt.extend(tok.encode(&args.prompt)?);
    }
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
    let stop = match args.chat {
        true => tok.end_of_turn_ids(),
        false => Vec::new(),
    };
    let out = generate(&params, &prompt, args.max_tokens, &mut sampler, &stop);
    if args.chat {
        println!("{}", tok.decode(&out)?);
        return Ok(());
    }
    let mut all = prompt;
    all.extend(out);
    println!("{}", tok.decode(&all)?);
    Ok(())
}

/// Says so when weights are not all finite (a checkpoint of a run that diverged): whatever
/// they compute is meaningless.
pub(crate) fn warn_if_not_finite(params: &anetrain_model::Params) {
    let bad = params.data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        eprintln!(
            "warning: {bad} of the model's {} weights are not finite (the run diverged); what \
             it computes is meaningless",
            params.data.len()
        );
    }
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    if args.batches == 0 {
        bail!("--batches must be at least 1");
    }
    let (params, tok, header) = match (&args.checkpoint, &args.model) {
        (Some(c), _) => {
            let (ckpt, tok) = load(c)?;
            (ckpt.params, tok, Some(ckpt.header))
        }
        (None, Some(m)) => {
            let (params, tok) =
                load_published(m, args.tokenizer.as_deref(), args.config.as_deref())?;
            (params, tok, None)
        }
        (None, None) => bail!("give --checkpoint, or --model"),
    };
    warn_if_not_finite(&params);
    let config = params.layout.config.clone();
    if let Some(why) = anetrain_train::tokenizer::mismatch(&tok, &config) {
        bail!(why);
    }
    // A given file is evaluated whole; by default, the validation split of the data the run
    // trained on (its file, as its checkpoints name it, or the embedded corpus).
    let saved = header
        .as_ref()
        .map(RunSettings::saved_in)
        .unwrap_or_default();
    let evaluated = args.data.clone().or(saved.data.clone());
    if args.mask_prompt && !evaluated.as_deref().is_some_and(ExampleSet::is_examples) {
        bail!(
            "--mask-prompt applies to fine-tuning examples (.jsonl), and the data evaluated is not"
        );
    }
    let examples = ExampleOptions {
        mask_prompt: args.mask_prompt || saved.example_options().mask_prompt,
        ..saved.example_options()
    };
    let (windows, source): (Dataset, String) = match (args.data.as_deref(), saved.data.as_deref()) {
        (Some(p), _) if ExampleSet::is_examples(p) => (
            ExampleSet::open_whole(p, &tok, config.seq_len, examples)?.into(),
            format!("the examples of {}", p.display()),
        ),
        (None, Some(p)) if ExampleSet::is_examples(p) => (
            ExampleSet::open(p, &tok, config.seq_len, examples)?.into(),
            format!("the validation examples of {}", p.display()),
        ),
        (Some(p), _) => (
            TokenSplit::validation_only(
                read_token_file(p, config.vocab)?,
                &p.display().to_string(),
                config.vocab,
                config.seq_len,
            )?
            .into(),
            p.display().to_string(),
        ),
        (None, Some(p)) => (
            TokenSplit::open(
                p,
                config.vocab,
                config.seq_len,
                TokenSplit::DEFAULT_VAL_FRACTION,
            )
            .context("the checkpoint's training data (give another file with --data)")?
            .into(),
            format!("the validation split of {}", p.display()),
        ),
        (None, None) => (
            corpus_dataset(&tok, &config)?.into(),
            "the validation split of the embedded corpus".into(),
        ),
    };
    let OpenDevice { device, clock, .. } = DeviceSpec::cpu(NumericMode::Fp32).open()?;
    let mut set = compile_kernel_set(
        &*device,
        WeightSnapshot {
            version: header.as_ref().map_or(0, |h| h.step),
            params: Arc::new(params),
        },
    )?;
    let mut buf = StepBuffers::new(&config);
    let options = TrainOptions {
        eval_windows: args.batches,
        ..TrainOptions::default()
    };
    let n = options.eval_windows.min(windows.validation_window_count());
    let loss = validation_loss(
        &*device,
        &*clock,
        &mut set,
        &mut buf,
        &windows,
        &options,
        config.seq_len,
    )
    .map_err(|e| anyhow!(e))?;
    println!(
        "mean loss {loss:.4} over {n} windows of {} tokens of {source}; perplexity {:.2}",
        config.seq_len,
        (loss as f64).exp()
    );
    Ok(())
}

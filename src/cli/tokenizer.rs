//! `anetrain tokenizer train`.

use super::data::read_corpus;
use anetrain_train::tokenizer::{self, Tokenizer, DEFAULT_VOCAB};
use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on a text corpus and write it as a Hugging Face tokenizer.json.
    /// Deterministic: the same corpus and size give the same file.
    Train {
        /// UTF-8 text to train on; the embedded Jane Austen corpus if omitted.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Vocabulary size, special tokens and the 256 byte tokens included.
        #[arg(long, default_value_t = DEFAULT_VOCAB)]
        vocab: usize,
        /// Where to write the tokenizer.json (replaced atomically).
        #[arg(long)]
        output: PathBuf,
    },
}

pub fn run(cmd: TokenizerCommand) -> anyhow::Result<()> {
    match cmd {
        TokenizerCommand::Train {
            input,
            vocab,
            output,
        } => train(input.as_deref(), vocab, &output),
    }
}

fn train(input: Option<&Path>, vocab: usize, output: &Path) -> anyhow::Result<()> {
    // A tokenizer.json under another name would be read back as a llama2.c file by its
    // extension; refuse before spending the training time.
    if output.extension().and_then(|e| e.to_str()) != Some("json") {
        bail!(
            "{}: the output is a Hugging Face tokenizer.json; give it a .json name",
            output.display()
        );
    }
    let (name, text) = read_corpus(input)?;
    let start = Instant::now();
    let trained = tokenizer::train_bpe(&text, vocab).with_context(|| name.clone())?;
    let seconds = start.elapsed().as_secs_f64();
    trained.save(output)?;
    println!(
        "trained a {vocab}-token byte-level BPE on {name} ({} bytes) in {seconds:.2} s; wrote {}",
        text.len(),
        output.display()
    );
    Ok(())
}

/// The tokenizer a command names, or the `tiny` model's default when it names none.
pub(crate) fn load_tokenizer(path: Option<&Path>) -> anyhow::Result<Tokenizer> {
    match path {
        Some(p) => Ok(Tokenizer::load(p)?),
        None => Ok(tokenizer::default_tokenizer()?),
    }
}

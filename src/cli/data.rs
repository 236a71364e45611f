//! `anetrain data prepare|info`.

use super::tokenizer::load_tokenizer;
use anetrain_train::data::token_file::MAGIC;
use anetrain_train::data::{decode_token_file, write_token_file};
use anetrain_train::embedded_corpus;
use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Tokenize a text file into a token file: headerless uint16 (llama2.c) when the vocabulary
    /// fits 16 bits, else the ANETOKEN uint32 format.
    Prepare {
        /// tokenizer.json (Hugging Face) or tokenizer.bin (llama2.c); the `tiny` model's BPE
        /// (1024 tokens, trained on the embedded corpus) if omitted.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// UTF-8 text; the embedded Jane Austen corpus if omitted.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Where to write the token file (replaced atomically).
        #[arg(long)]
        output: PathBuf,
    },
    /// Print a token file's format, token count and id range.
    Info {
        file: PathBuf,
        /// Check every id against this vocabulary size.
        #[arg(long)]
        vocab: Option<usize>,
    },
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Prepare {
            tokenizer,
            input,
            output,
        } => prepare(tokenizer.as_deref(), input.as_deref(), &output),
        DataCommand::Info { file, vocab } => info(&file, vocab),
    }
}

/// The text of `--input`, or the embedded corpus; with a name for messages.
pub(crate) fn read_corpus(input: Option<&Path>) -> anyhow::Result<(String, String)> {
    let (name, text) = match input {
        Some(p) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read text file {name}"))?;
            (name, text)
        }
        None => (
            "the embedded corpus".to_string(),
            embedded_corpus().to_string(),
        ),
    };
    if text.is_empty() {
        bail!("{name}: no text");
    }
    Ok((name, text))
}

fn prepare(tokenizer: Option<&Path>, input: Option<&Path>, output: &Path) -> anyhow::Result<()> {
    if input.is_some_and(|input| super::same_file(input, output)) {
        bail!(
            "--output {} is the --input text itself: choose another file",
            output.display()
        );
    }
    let tokenizer = load_tokenizer(tokenizer)?;
    let (name, text) = read_corpus(input)?;
    let ids = tokenizer
        .encode(&text)
        .with_context(|| format!("cannot tokenize {name}"))?;
    let vocab = tokenizer.vocab_size();
    let format = write_token_file(output, &ids, vocab)?;
    println!(
        "wrote {} tokens ({}, vocabulary {vocab}) to {}: {} bytes of text, {:.3} bytes/token",
        ids.len(),
        format.name(),
        output.display(),
        text.len(),
        text.len() as f64 / ids.len().max(1) as f64
    );
    Ok(())
}

fn info(file: &Path, vocab: Option<usize>) -> anyhow::Result<()> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read token file {name}"))?;
    // Without a vocabulary, accept any id the file's own format can hold.
    let vocab = vocab.unwrap_or(if bytes.starts_with(&MAGIC) {
        1 << 32
    } else {
        1 << 16
    });
    let tokens = decode_token_file(&bytes, vocab, &name)?;
    let (min, max) = tokens
        .iter()
        .fold((u32::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
    print!(
        "{name}: {}, {} tokens",
        tokens.format().name(),
        tokens.len()
    );
    if !tokens.is_empty() {
        print!(", ids {min}..={max}");
    }
    println!();
    Ok(())
}

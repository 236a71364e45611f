//! The data of a run: its tokenizer, and its tokens split into training and validation.

use anetrain_model::ModelConfig;
use anetrain_train::data::{TokenData, TokenDataset};
use anetrain_train::tokenizer::{default_tokenizer, Tokenizer, TokenizerKind};
use std::path::Path;

pub struct RunData {
    pub tokenizer: Tokenizer,
    pub tokenizer_kind: TokenizerKind,
    pub tokenizer_bytes: Vec<u8>,
    /// The tokens, split: the last 5 % validate.
    pub dataset: TokenDataset,
}

/// The tokenizer (from a resumed checkpoint, a file, or the default BPE) and the tokens (a token
/// file, or the embedded corpus encoded with that tokenizer).
pub fn load_data(
    data: Option<&Path>,
    tokenizer: Option<&Path>,
    from_checkpoint: Option<(TokenizerKind, &[u8])>,
    config: &ModelConfig,
    verbose: bool,
) -> anyhow::Result<RunData> {
    let tokenizer = match (from_checkpoint, tokenizer) {
        (Some((kind, bytes)), _) => {
            Tokenizer::from_bytes(kind, bytes, "the checkpoint's tokenizer")?
        }
        (None, Some(path)) => Tokenizer::load(path)?,
        (None, None) => default_tokenizer()?,
    };
    let kind = tokenizer.kind();
    let bytes = tokenizer.to_bytes()?;
    let dataset = match data {
        Some(path) => TokenDataset::open(
            path,
            config.vocab,
            config.seq_len,
            TokenDataset::DEFAULT_VAL_FRACTION,
        )?,
        None => {
            if verbose {
                println!("tokenizing the embedded corpus (Jane Austen's six novels)...");
            }
            corpus_dataset(&tokenizer, config)?
        }
    };
    Ok(RunData {
        tokenizer,
        tokenizer_kind: kind,
        tokenizer_bytes: bytes,
        dataset,
    })
}

/// The embedded corpus in `tokenizer`'s ids, split as a run splits it.
pub fn corpus_dataset(tokenizer: &Tokenizer, config: &ModelConfig) -> anyhow::Result<TokenDataset> {
    let source = "the embedded corpus";
    let ids = tokenizer.encode(anetrain_train::embedded_corpus())?;
    Ok(TokenDataset::new(
        TokenData::from_ids(&ids, config.vocab, source)?,
        source,
        config.vocab,
        config.seq_len,
        TokenDataset::DEFAULT_VAL_FRACTION,
    )?)
}

//! The data of a run: its tokenizer, and its tokens split into training and validation.

use super::RunError;
use crate::checkpoint::Checkpoint;
use crate::data::examples::{ExampleOptions, ExampleSet};
use crate::data::{Dataset, TokenIds, TokenSplit};
use crate::tokenizer::{default_tokenizer, Tokenizer, TokenizerKind};
use anetrain_model::ModelConfig;
use std::path::Path;

pub struct RunData {
    pub tokenizer: Tokenizer,
    pub tokenizer_kind: TokenizerKind,
    /// The tokenizer as its own file format, for checkpoints.
    pub tokenizer_bytes: Vec<u8>,
    /// Its `tokenizer_config.json` as JSON text, if it has one.
    pub tokenizer_config: Option<String>,
    /// The tokens, split (the last 5 % validate), or fine-tuning examples in windows.
    pub dataset: Dataset,
}

/// The tokenizer (a resumed checkpoint's, a file, or the default BPE) and the tokens (a token
/// file, fine-tuning examples in JSONL packed by `examples`, or the embedded corpus encoded
/// with that tokenizer). `notice` hears of the slow part, tokenizing.
pub fn load_data(
    data: Option<&Path>,
    examples: ExampleOptions,
    tokenizer: Option<&Path>,
    from_checkpoint: Option<&Checkpoint>,
    config: &ModelConfig,
    notice: &mut dyn FnMut(&str),
) -> Result<RunData, RunError> {
    let tokenizer = match (from_checkpoint, tokenizer) {
        (Some(checkpoint), _) => checkpoint.tokenizer()?,
        (None, Some(path)) => Tokenizer::load(path)?,
        (None, None) => default_tokenizer()?,
    };
    // Before any data is read in the tokenizer's ids: an id past the model's vocabulary
    // would otherwise be blamed on the data.
    if let Some(why) = crate::tokenizer::mismatch(&tokenizer, config) {
        return Err(RunError::Invalid(why));
    }
    let kind = tokenizer.kind();
    let bytes = tokenizer.to_bytes()?;
    let dataset = match data {
        Some(path) if ExampleSet::is_examples(path) => {
            notice(&format!("tokenizing the examples of {}...", path.display()));
            ExampleSet::open(path, &tokenizer, config.seq_len, examples)?.into()
        }
        Some(path) => TokenSplit::open(
            path,
            config.vocab,
            config.seq_len,
            TokenSplit::DEFAULT_VAL_FRACTION,
        )?
        .into(),
        None => {
            notice("tokenizing the embedded corpus (Jane Austen's six novels)...");
            corpus_dataset(&tokenizer, config)?.into()
        }
    };
    Ok(RunData {
        tokenizer_kind: kind,
        tokenizer_bytes: bytes,
        tokenizer_config: tokenizer.config().map(|c| c.to_json()),
        dataset,
        tokenizer,
    })
}

/// The embedded corpus in `tokenizer`'s ids, split as a run splits it.
pub fn corpus_dataset(tokenizer: &Tokenizer, config: &ModelConfig) -> Result<TokenSplit, RunError> {
    let source = "the embedded corpus";
    let ids = tokenizer.encode(crate::embedded_corpus())?;
    Ok(TokenSplit::new(
        TokenIds::from_ids(&ids, config.vocab, source)?,
        source,
        config.vocab,
        config.seq_len,
        TokenSplit::DEFAULT_VAL_FRACTION,
    )?)
}

//! The data of a run: its tokenizer and tokens, and the windows the trainer draws from them.

use anetrain_model::ModelConfig;
use anetrain_train::data::token_file::read_token_file;
use anetrain_train::tokenizer::{default_tokenizer, Tokenizer, TokenizerKind};
use anetrain_train::trainer::WindowSource;
use anyhow::{anyhow, bail};
use std::path::Path;
use std::sync::Arc;

pub struct RunData {
    pub tokenizer: Tokenizer,
    pub tokenizer_kind: String,
    pub tokenizer_bytes: Vec<u8>,
    pub tokens: Arc<Vec<u32>>,
}

/// The tokenizer (from a resumed checkpoint, a file, or the default BPE) and the tokens (a token
/// file, or the embedded corpus encoded with that tokenizer).
pub fn load_data(
    data: Option<&Path>,
    tokenizer: Option<&Path>,
    from_checkpoint: Option<(&str, &[u8])>,
    config: &ModelConfig,
    verbose: bool,
) -> anyhow::Result<RunData> {
    let tokenizer = match (from_checkpoint, tokenizer) {
        (Some((kind, bytes)), _) => Tokenizer::from_bytes(
            TokenizerKind::from_name(kind)
                .ok_or_else(|| anyhow!("the checkpoint's tokenizer kind `{kind}` is unknown"))?,
            bytes,
            "the checkpoint's tokenizer",
        )?,
        (None, Some(path)) => Tokenizer::load(path)?,
        (None, None) => default_tokenizer()?,
    };
    let kind = tokenizer.kind().name().to_string();
    let bytes = tokenizer.to_bytes()?;
    let tokens = match data {
        Some(path) => read_token_file(path, config.vocab)?.to_vec(),
        None => {
            if verbose {
                println!("tokenizing the embedded corpus (Jane Austen's six novels)...");
            }
            tokenizer.encode(anetrain_train::embedded_corpus())?
        }
    };
    if let Some((i, &t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= config.vocab)
    {
        bail!(
            "token {t} at index {i} is outside the model's vocabulary of {}",
            config.vocab
        );
    }
    Ok(RunData {
        tokenizer,
        tokenizer_kind: kind,
        tokenizer_bytes: bytes,
        tokens: Arc::new(tokens),
    })
}

/// Random training windows from the first part of the tokens, fixed validation windows from
/// the last part; the two never overlap.
pub struct RandomWindows {
    tokens: Arc<Vec<u32>>,
    seq: usize,
    train_end: usize,
    rng: u64,
}

impl RandomWindows {
    pub fn new(
        tokens: Arc<Vec<u32>>,
        seq: usize,
        val_fraction: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let n = tokens.len();
        let val = ((n as f64 * val_fraction) as usize).max(seq + 1);
        if n < val + seq + 1 {
            bail!(
                "the data has {n} tokens: too few for a training window of {} plus a validation window of {}",
                seq + 1,
                seq + 1
            );
        }
        Ok(RandomWindows {
            tokens,
            seq,
            train_end: n - val,
            rng: seed,
        })
    }

    /// Every window of `tokens` is a validation window (evaluating a whole file).
    pub fn validation_only(tokens: Arc<Vec<u32>>, seq: usize) -> anyhow::Result<Self> {
        if tokens.len() < seq + 1 {
            bail!(
                "the data has {} tokens: too few for one window of {}",
                tokens.len(),
                seq + 1
            );
        }
        Ok(RandomWindows {
            tokens,
            seq,
            train_end: 0,
            rng: 0,
        })
    }

    pub fn validation_tokens(&self) -> usize {
        self.tokens.len() - self.train_end
    }

    /// SplitMix64: the next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn restore(&mut self, state: &serde_json::Value) -> anyhow::Result<()> {
        self.rng = state
            .get("rng")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("the checkpoint's sampler state is missing or malformed"))?;
        Ok(())
    }
}

impl WindowSource for RandomWindows {
    fn next_train_window(&mut self, out: &mut [u32]) {
        let starts = self.train_end - self.seq; // windows of seq+1 ending before train_end
        let start = (self.next_u64() % starts as u64) as usize;
        out.copy_from_slice(&self.tokens[start..start + self.seq + 1]);
    }

    fn validation_window(&self, i: usize, out: &mut [u32]) {
        let start = self.train_end + (i % self.validation_windows()) * self.seq;
        out.copy_from_slice(&self.tokens[start..start + self.seq + 1]);
    }

    fn validation_windows(&self) -> usize {
        ((self.tokens.len() - self.train_end - 1) / self.seq).max(1)
    }

    fn state(&self) -> serde_json::Value {
        // As a string: JSON numbers lose u64 precision in some readers.
        serde_json::json!({ "rng": self.rng.to_string() })
    }
}

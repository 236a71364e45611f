//! A token data set split into training and validation parts, with the windows drawn from each.

use super::sampler::{SamplerState, WindowSampler};
use super::token_file::{read_token_file, TokenData};
use super::DataError;
use std::path::Path;

/// Tokens split at one index: the first part trains, the last `val_fraction` validates. A
/// window of `seq_len + 1` tokens (inputs and shifted targets) always lies wholly in one part.
#[derive(Clone, Debug)]
pub struct TokenDataset {
    source: String,
    tokens: TokenData,
    seq_len: usize,
    /// Index of the first validation token.
    split: usize,
}

impl TokenDataset {
    /// The validation fraction used unless configured otherwise.
    pub const DEFAULT_VAL_FRACTION: f64 = 0.05;

    /// Reads a token file (see [`read_token_file`]) and splits it.
    pub fn open(
        path: &Path,
        vocab: usize,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<TokenDataset, DataError> {
        let tokens = read_token_file(path, vocab)?;
        TokenDataset::new(
            tokens,
            &path.display().to_string(),
            vocab,
            seq_len,
            val_fraction,
        )
    }

    /// Splits `tokens` (named `source` in errors): the last `val_fraction` of them (rounded
    /// down to whole tokens), in `0.0..1.0`, validate. Each non-empty part must hold at least
    /// one window, and every id must be below `vocab`.
    pub fn new(
        tokens: TokenData,
        source: &str,
        vocab: usize,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<TokenDataset, DataError> {
        if seq_len == 0 {
            return Err(DataError::Invalid(
                "the sequence length must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(DataError::Invalid(format!(
                "the validation fraction must be in [0, 1), not {val_fraction}"
            )));
        }
        if let Some((index, value)) = tokens.first_out_of_range(vocab) {
            return Err(DataError::TokenOutOfRange {
                path: source.to_string(),
                index,
                value,
                vocab,
            });
        }
        let n = tokens.len();
        let window = seq_len + 1;
        let too_short = |part: String, tokens: usize| DataError::TooShort {
            path: source.to_string(),
            part,
            tokens: tokens as u64,
            window: window as u64,
        };
        if n < window {
            return Err(too_short("the file".into(), n));
        }
        let val = (n as f64 * val_fraction) as usize;
        let split = n - val;
        if split < window {
            return Err(too_short(
                format!(
                    "the training split (first {}%)",
                    percent(1.0 - val_fraction)
                ),
                split,
            ));
        }
        // A requested validation split must be usable; 0 asks for none.
        if val_fraction > 0.0 && val < window {
            return Err(too_short(
                format!("the validation split (last {}%)", percent(val_fraction)),
                val,
            ));
        }
        Ok(TokenDataset {
            source: source.to_string(),
            tokens,
            seq_len,
            split,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn tokens(&self) -> &TokenData {
        &self.tokens
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Tokens per window: `seq_len` inputs plus the one more the targets reach.
    pub fn window_len(&self) -> usize {
        self.seq_len + 1
    }

    /// Tokens in the training split, `0..split`.
    pub fn train_len(&self) -> usize {
        self.split
    }

    /// Tokens in the validation split, `split..`.
    pub fn val_len(&self) -> usize {
        self.tokens.len() - self.split
    }

    /// Index of the first validation token.
    pub fn split_index(&self) -> usize {
        self.split
    }

    /// Number of distinct training window starts: a window starting at the last of them ends
    /// exactly at the split.
    pub fn train_positions(&self) -> u64 {
        (self.split - self.window_len() + 1) as u64
    }

    /// A fresh sampler of training windows.
    pub fn sampler(&self, seed: u64) -> WindowSampler {
        // Construction guaranteed at least one training window.
        WindowSampler::over(seed, self.train_positions())
    }

    /// A sampler continuing from a checkpoint's state.
    pub fn restore_sampler(&self, state: &SamplerState) -> Result<WindowSampler, DataError> {
        WindowSampler::restore(state, self.train_positions())
    }

    /// The training window starting at `start`, or None if it would cross the split.
    pub fn train_window(&self, start: usize) -> Option<Vec<u32>> {
        if start.checked_add(self.window_len())? > self.split {
            return None;
        }
        let mut out = vec![0; self.window_len()];
        self.tokens.copy_to(start, &mut out)?;
        Some(out)
    }

    /// The next random training window and its start. The sampler must be this data set's
    /// (same number of window starts), else its windows would not be the ones a checkpoint
    /// expects.
    pub fn next_train_window(
        &self,
        sampler: &mut WindowSampler,
    ) -> Result<(usize, Vec<u32>), DataError> {
        let positions = sampler.positions();
        let mismatch = || {
            DataError::SamplerMismatch(format!(
                "the sampler draws from {positions} window starts, {} has {}",
                self.source,
                self.train_positions()
            ))
        };
        if sampler.positions() != self.train_positions() {
            return Err(mismatch());
        }
        let start = sampler.next_start();
        let window = self.train_window(start).ok_or_else(mismatch)?;
        Ok((start, window))
    }

    /// The validation split as consecutive, non-overlapping windows of `seq_len + 1` tokens,
    /// in order; a remainder shorter than a window is left out.
    pub fn validation_windows(&self) -> ValidationWindows<'_> {
        ValidationWindows {
            data: self,
            next: self.split,
        }
    }

    /// Number of windows `validation_windows` yields.
    pub fn validation_window_count(&self) -> usize {
        self.val_len() / self.window_len()
    }
}

/// A fraction as a percentage for messages: 0.05 → "5", 0.125 → "12.5".
fn percent(fraction: f64) -> String {
    format!("{}", (fraction * 1e4).round() / 1e2)
}

/// Iterator over the validation windows of a [`TokenDataset`].
pub struct ValidationWindows<'a> {
    data: &'a TokenDataset,
    next: usize,
}

impl Iterator for ValidationWindows<'_> {
    type Item = Vec<u32>;

    fn next(&mut self) -> Option<Vec<u32>> {
        let len = self.data.window_len();
        let mut out = vec![0; len];
        self.data.tokens.copy_to(self.next, &mut out)?;
        self.next += len;
        Some(out)
    }
}

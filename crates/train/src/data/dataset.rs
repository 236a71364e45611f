//! A token data set split into training and validation parts, with the windows drawn from each.

use super::examples::ExampleSet;
use super::sampler::{SamplerState, WindowSampler};
use super::token_file::{read_token_file, TokenIds};
use super::{DataError, ValidationSource, WindowSource};
use std::path::Path;

/// Tokens split at one index: the first part trains, the last `val_fraction` validates. A
/// window of `seq_len + 1` tokens (inputs and shifted targets) always lies wholly in one part.
#[derive(Clone, Debug)]
pub struct TokenSplit {
    source: String,
    tokens: TokenIds,
    seq_len: usize,
    /// Index of the first validation token.
    split: usize,
}

impl TokenSplit {
    /// The validation fraction used unless configured otherwise.
    pub const DEFAULT_VAL_FRACTION: f64 = 0.05;

    /// Reads a token file (see [`read_token_file`]) and splits it.
    pub fn open(
        path: &Path,
        vocab: usize,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<TokenSplit, DataError> {
        let tokens = read_token_file(path, vocab)?;
        TokenSplit::new(
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
        tokens: TokenIds,
        source: &str,
        vocab: usize,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<TokenSplit, DataError> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(DataError::Invalid(format!(
                "the validation fraction must be in [0, 1), not {val_fraction}"
            )));
        }
        // The checks of the whole file (sequence length, ids, one window), then the split.
        let whole = TokenSplit::validation_only(tokens, source, vocab, seq_len)?;
        let n = whole.tokens.len();
        let window = whole.window_len();
        let too_short = |part: String, tokens: usize| DataError::TooShort {
            path: source.to_string(),
            part,
            tokens: tokens as u64,
            window: window as u64,
        };
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
        Ok(TokenSplit { split, ..whole })
    }

    /// All of `tokens` as validation windows, with no training split: for evaluating a model
    /// on a whole file. Needs one window and every id below `vocab`.
    pub fn validation_only(
        tokens: TokenIds,
        source: &str,
        vocab: usize,
        seq_len: usize,
    ) -> Result<TokenSplit, DataError> {
        if seq_len == 0 {
            return Err(DataError::Invalid(
                "the sequence length must be at least 1".into(),
            ));
        }
        tokens.check_vocab(vocab, source)?;
        if tokens.len() < seq_len + 1 {
            return Err(DataError::TooShort {
                path: source.to_string(),
                part: "the file".into(),
                tokens: tokens.len() as u64,
                window: seq_len as u64 + 1,
            });
        }
        Ok(TokenSplit {
            source: source.to_string(),
            tokens,
            seq_len,
            split: 0,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn tokens(&self) -> &TokenIds {
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
        (self.split + 1).saturating_sub(self.window_len()) as u64
    }

    /// A fresh sampler of training windows (none without a training split).
    pub fn sampler(&self, seed: u64) -> Result<WindowSampler, DataError> {
        WindowSampler::new(seed, self.train_positions())
    }

    /// A sampler continuing from a checkpoint's state.
    pub fn restore_sampler(&self, state: &SamplerState) -> Result<WindowSampler, DataError> {
        WindowSampler::restore(state, self.train_positions())
    }

    /// The training window starting at `start`, or None if it would cross the split.
    pub fn train_window(&self, start: usize) -> Option<Vec<u32>> {
        let mut out = vec![0; self.window_len()];
        self.copy_train_window(start, &mut out)?;
        Some(out)
    }

    /// Copies the training window starting at `start` into the first `window_len()` values of
    /// `out`; None if it would cross the split.
    fn copy_train_window(&self, start: usize, out: &mut [u32]) -> Option<()> {
        if start.checked_add(self.window_len())? > self.split {
            return None;
        }
        self.tokens
            .copy_to(start, out.get_mut(..self.window_len())?)
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

impl ValidationSource for TokenSplit {
    fn validation_window(&self, i: usize, out: &mut [u32]) {
        let count = self.validation_window_count().max(1);
        let start = self.split + (i % count) * self.window_len();
        // Construction guaranteed one whole window at the split whenever there is a
        // validation part; without one the last window of the data stands in.
        let start = start.min(self.tokens.len() - self.window_len());
        self.tokens
            .copy_to(start, &mut out[..self.window_len()])
            .expect("a window inside the data");
    }

    fn validation_window_count(&self) -> usize {
        TokenSplit::validation_window_count(self)
    }
}

/// The data of a run: a token stream whose windows start anywhere, or fine-tuning examples
/// packed into windows.
#[derive(Clone, Debug)]
pub enum Dataset {
    Tokens(TokenSplit),
    Examples(ExampleSet),
}

impl From<TokenSplit> for Dataset {
    fn from(d: TokenSplit) -> Dataset {
        Dataset::Tokens(d)
    }
}

impl From<ExampleSet> for Dataset {
    fn from(d: ExampleSet) -> Dataset {
        Dataset::Examples(d)
    }
}

impl Dataset {
    pub fn source(&self) -> &str {
        match self {
            Dataset::Tokens(d) => d.source(),
            Dataset::Examples(d) => d.source(),
        }
    }

    /// The number of training windows a sampler draws from: window starts in a stream, packed
    /// windows of examples.
    pub fn train_positions(&self) -> u64 {
        match self {
            Dataset::Tokens(d) => d.train_positions(),
            Dataset::Examples(d) => d.train_windows() as u64,
        }
    }

    /// Tokens for training (padding of packed windows included).
    pub fn train_len(&self) -> usize {
        match self {
            Dataset::Tokens(d) => d.train_len(),
            Dataset::Examples(d) => d.train_len(),
        }
    }

    /// Tokens for validation (padding of packed windows included).
    pub fn val_len(&self) -> usize {
        match self {
            Dataset::Tokens(d) => d.val_len(),
            Dataset::Examples(d) => d.val_len(),
        }
    }

    /// What the data is, for the line a run starts with.
    pub fn describe(&self) -> String {
        match self {
            Dataset::Tokens(d) => format!(
                "{} tokens ({} for validation)",
                d.tokens().len(),
                d.val_len()
            ),
            Dataset::Examples(d) => d.describe(),
        }
    }

    fn copy_train_window(&self, position: usize, out: &mut [u32]) -> Option<()> {
        match self {
            Dataset::Tokens(d) => d.copy_train_window(position, out),
            Dataset::Examples(d) => d.copy_train_window(position, out),
        }
    }
}

impl ValidationSource for Dataset {
    fn validation_window(&self, i: usize, out: &mut [u32]) {
        match self {
            Dataset::Tokens(d) => d.validation_window(i, out),
            Dataset::Examples(d) => d.validation_window(i, out),
        }
    }

    fn validation_window_count(&self) -> usize {
        match self {
            Dataset::Tokens(d) => ValidationSource::validation_window_count(d),
            Dataset::Examples(d) => d.validation_window_count(),
        }
    }
}

/// The key of a sampler state that holds an example set's [`ExampleSet::fingerprint`].
const FINGERPRINT: &str = "windows_crc32";

/// A data set with the sampler that draws its training windows: the window source of a run,
/// deterministic from a seed and continued exactly from a checkpoint's state.
#[derive(Clone, Debug)]
pub struct TrainingWindows {
    dataset: Dataset,
    sampler: WindowSampler,
}

impl TrainingWindows {
    /// Draws from `dataset`'s training windows with a sampler seeded by `seed`.
    pub fn new(dataset: impl Into<Dataset>, seed: u64) -> Result<TrainingWindows, DataError> {
        let dataset = dataset.into();
        let sampler = WindowSampler::new(seed, dataset.train_positions())?;
        Ok(TrainingWindows { dataset, sampler })
    }

    /// Continues from a checkpoint's sampler state ([`WindowSource::state`]); refuses a state
    /// of another sampler or another data set.
    pub fn restore(
        dataset: impl Into<Dataset>,
        state: &serde_json::Value,
    ) -> Result<TrainingWindows, DataError> {
        let dataset = dataset.into();
        let saved: SamplerState = serde_json::from_value(state.clone()).map_err(|e| {
            DataError::SamplerMismatch(format!(
                "the checkpoint's sampler state is not one this build writes ({e})"
            ))
        })?;
        if let Dataset::Examples(set) = &dataset {
            let recorded = state.get(FINGERPRINT).and_then(serde_json::Value::as_u64);
            if recorded.is_some_and(|f| f != u64::from(set.fingerprint)) {
                return Err(DataError::SamplerMismatch(format!(
                    "the examples of {} do not make the windows the checkpoint drew from (a file \
                     or a setting changed since)",
                    set.source()
                )));
            }
        }
        let sampler = WindowSampler::restore(&saved, dataset.train_positions())?;
        Ok(TrainingWindows { dataset, sampler })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }
}

impl ValidationSource for TrainingWindows {
    fn validation_window(&self, i: usize, out: &mut [u32]) {
        self.dataset.validation_window(i, out)
    }

    fn validation_window_count(&self) -> usize {
        self.dataset.validation_window_count()
    }
}

impl WindowSource for TrainingWindows {
    fn next_train_window(&mut self, out: &mut [u32]) {
        let start = self.sampler.next_start();
        // The sampler was made from this data set, so every start it draws begins a window
        // that ends at or before the split.
        self.dataset
            .copy_train_window(start, out)
            .expect("the sampler draws starts of this data set's training windows");
    }

    fn state(&self) -> serde_json::Value {
        let mut state =
            serde_json::to_value(self.sampler.state()).expect("a sampler state serialises");
        if let (Dataset::Examples(set), Some(fields)) = (&self.dataset, state.as_object_mut()) {
            fields.insert(FINGERPRINT.into(), set.fingerprint.into());
        }
        state
    }
}

/// A fraction as a percentage for messages: 0.05 → "5", 0.125 → "12.5".
fn percent(fraction: f64) -> String {
    format!("{}", (fraction * 1e4).round() / 1e2)
}

/// Iterator over the validation windows of a [`TokenSplit`].
pub struct ValidationWindows<'a> {
    data: &'a TokenSplit,
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

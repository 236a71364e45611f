//! Training data: the embedded corpus, token files, the train/validation split, and the
//! deterministic window sampler.

pub mod chat;
pub mod dataset;
pub mod examples;
pub mod sampler;
pub mod token_file;

/// The sampler's generator is the one that initialises the weights.
pub use anetrain_model::init::SplitMix64;
pub use dataset::{Dataset, TokenSplit, TrainingWindows, ValidationWindows};
pub use sampler::{SamplerState, WindowSampler};
pub use token_file::{
    decode_token_file, encode_token_file, read_token_file, write_token_file, TokenFormat, TokenIds,
};

use thiserror::Error;

/// A window token with this bit set is not a target: the position before it is not trained
/// to predict it (a prompt token, padding, an example's first token). Its id is the rest.
pub const NOT_A_TARGET: u32 = 1 << 31;

/// The inputs and targets of a window of `seq_len + 1` tokens: inputs are the first
/// `seq_len` ids, targets the last `seq_len`, [`anetrain_model::IGNORED_TARGET`] where a token
/// is flagged [`NOT_A_TARGET`].
pub fn split_window(window: &[u32], inputs: &mut Vec<u32>, targets: &mut Vec<u32>) {
    let s = window.len() - 1;
    inputs.clear();
    inputs.extend(window[..s].iter().map(|&t| t & !NOT_A_TARGET));
    targets.clear();
    targets.extend(window[1..].iter().map(|&t| match t & NOT_A_TARGET {
        0 => t,
        _ => anetrain_model::IGNORED_TARGET,
    }));
}

/// Where validation windows come from. A window is `seq_len + 1` tokens: inputs are the first
/// `seq_len`, targets the last `seq_len`.
pub trait ValidationSource {
    /// The `i`-th validation window (deterministic; `i` wraps around the count).
    fn validation_window(&self, i: usize, out: &mut [u32]);
    fn validation_window_count(&self) -> usize;
}

/// Where a run's windows come from: random training windows, and validation windows.
pub trait WindowSource: ValidationSource {
    fn next_train_window(&mut self, out: &mut [u32]);
    /// The sampler's state, for checkpoints.
    fn state(&self) -> serde_json::Value;
}

/// The embedded default corpus: Jane Austen's six novels (public domain; see `data/README.md`
/// at the repository root), compiled into the binary so a fresh machine trains offline.
pub fn embedded_corpus() -> &'static str {
    include_str!("../../../../data/austen.txt")
}

/// Errors of token files and data sets; each names the file (or source) it concerns.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write token file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Example {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path}: truncated: {len} bytes is not a whole number of {width}-byte tokens \
         (the token at byte {at} is cut off)"
    )]
    Truncated {
        path: String,
        len: u64,
        width: u8,
        at: u64,
    },
    #[error("{path}: truncated: {len} bytes, shorter than the 24-byte ANETOKEN header")]
    TruncatedHeader { path: String, len: u64 },
    #[error(
        "{path}: truncated: the header announces {declared} tokens but the file holds {found} \
         ({len} bytes)"
    )]
    ShorterThanHeader {
        path: String,
        declared: u64,
        found: u64,
        len: u64,
    },
    #[error("{path}: corrupt: {extra} bytes follow the {declared} tokens the header announces")]
    LongerThanHeader {
        path: String,
        declared: u64,
        extra: u64,
    },
    #[error(
        "{path}: missing header: a vocabulary of {vocab} tokens needs the uint32 token file, \
         which starts with `ANETOKEN`; found {found}"
    )]
    MissingHeader {
        path: String,
        vocab: usize,
        found: String,
    },
    #[error("{path}: wrong header: {field} is {found}, expected {expected}")]
    WrongHeader {
        path: String,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "{path}: token {index} is {value}, outside the vocabulary of {vocab} tokens \
         (ids 0..={max})",
        max = *vocab as i64 - 1
    )]
    TokenOutOfRange {
        path: String,
        index: u64,
        value: u32,
        vocab: usize,
    },
    #[error(
        "{path}: {part} holds {tokens} tokens, too short for one window of seq+1 = {window} tokens"
    )]
    TooShort {
        path: String,
        part: String,
        tokens: u64,
        window: u64,
    },
    #[error("sampler state: {0}")]
    SamplerMismatch(String),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flagged_token_is_an_input_but_not_a_target() {
        let window = [5, 6 | NOT_A_TARGET, 7, 8 | NOT_A_TARGET];
        let (mut inputs, mut targets) = (vec![99], vec![]);
        split_window(&window, &mut inputs, &mut targets);
        assert_eq!(inputs, [5, 6, 7]);
        assert_eq!(
            targets,
            [
                anetrain_model::IGNORED_TARGET,
                7,
                anetrain_model::IGNORED_TARGET
            ]
        );
        // A plain window is the shifted pair it always was.
        split_window(&[1, 2, 3], &mut inputs, &mut targets);
        assert_eq!(
            (inputs.as_slice(), targets.as_slice()),
            ([1, 2].as_slice(), [2, 3].as_slice())
        );
    }
}

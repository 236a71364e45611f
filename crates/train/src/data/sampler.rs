//! Deterministic random windows, with a state a checkpoint can save and restore exactly.

use super::DataError;
use anetrain_model::init::SplitMix64;
use serde::{Deserialize, Serialize};

/// Everything needed to continue a [`WindowSampler`] exactly where it stopped; serializable for
/// checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Names the generator, so a future change of algorithm is detected, not silently resumed.
    pub algorithm: String,
    /// The seed the sampler started from (informational).
    pub seed: u64,
    /// The generator's state.
    pub rng: SplitMix64,
    /// Windows drawn so far.
    pub drawn: u64,
    /// Number of possible window starts in the training split: restoring against a data set
    /// with another count would draw different windows, so it is refused.
    pub positions: u64,
}

const ALGORITHM: &str = "splitmix64-lemire";

/// Draws training windows of `seq_len + 1` tokens uniformly at random from the training split,
/// deterministically from a seed. It yields window starts; the data set copies the tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSampler {
    seed: u64,
    rng: SplitMix64,
    drawn: u64,
    positions: u64,
}

impl WindowSampler {
    /// A sampler over `positions` possible window starts (`0..positions`); at least one.
    pub fn new(seed: u64, positions: u64) -> Result<WindowSampler, DataError> {
        if positions == 0 {
            return Err(DataError::Invalid(
                "a window sampler needs at least one possible window".into(),
            ));
        }
        Ok(WindowSampler::over(seed, positions))
    }

    /// A sampler over `positions >= 1` starts, for callers that already checked it.
    pub(crate) fn over(seed: u64, positions: u64) -> WindowSampler {
        debug_assert!(positions > 0);
        WindowSampler {
            seed,
            rng: SplitMix64::new(seed),
            drawn: 0,
            positions,
        }
    }

    /// The start of the next window, in `0..positions`.
    pub fn next_start(&mut self) -> usize {
        self.drawn += 1;
        // positions came from a usize length, so the draw fits a usize.
        self.rng.below(self.positions) as usize
    }

    pub fn drawn(&self) -> u64 {
        self.drawn
    }

    pub fn positions(&self) -> u64 {
        self.positions
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            algorithm: ALGORITHM.to_string(),
            seed: self.seed,
            rng: self.rng.clone(),
            drawn: self.drawn,
            positions: self.positions,
        }
    }

    /// Continues from a saved state, over a data set with `positions` window starts; refuses a
    /// state from another algorithm or another data set size.
    pub fn restore(state: &SamplerState, positions: u64) -> Result<WindowSampler, DataError> {
        if state.algorithm != ALGORITHM {
            return Err(DataError::SamplerMismatch(format!(
                "the saved sampler uses `{}`, this build uses `{ALGORITHM}`",
                state.algorithm
            )));
        }
        if positions == 0 {
            return Err(DataError::Invalid(
                "a window sampler needs at least one possible window".into(),
            ));
        }
        if state.positions != positions {
            return Err(DataError::SamplerMismatch(format!(
                "the saved sampler drew from {} window starts, this data set has {positions}: \
                 not the same data or sequence length",
                state.positions
            )));
        }
        Ok(WindowSampler {
            seed: state.seed,
            rng: state.rng.clone(),
            drawn: state.drawn,
            positions,
        })
    }
}

//! Deterministic random windows, with a state a checkpoint can save and restore exactly.

use super::DataError;
use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014; Vigna's public-domain `splitmix64.c`): the state advances by a fixed odd
/// constant and each output is a bijective mix of it. It passes BigCrush, its whole state is one
/// u64 (trivial to save), and it is small enough to keep here instead of depending on a crate
/// whose algorithm could change between versions and silently change which windows a resumed
/// run sees. Seeded with 1234567 its first outputs are 6457827717110365317,
/// 3203168211198807973, 9817491932198370423 (the published reference values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (`bound > 0`), without modulo bias: Lemire's
    /// multiply-and-reject ("Fast random integer generation in an interval", 2019). The high
    /// half of `x · bound` is uniform once the few `x` whose low half falls below
    /// `2^64 mod bound` are rejected.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

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

//! Random initialisation of a model's parameters, deterministic from a seed.
//!
//! The generator is SplitMix64 (Steele, Lea and Flood, 2014; the constants of Java's
//! `SplittableRandom`) feeding the Box–Muller transform. Both are a few lines, so the exact
//! stream is documented here and reproducible in any language, independently of crate versions.
//!
//! Scheme (GPT-2 style):
//! - RMSNorm weights are exactly 1;
//! - the embedding, every matrix and an untied classifier are N(0, 0.02²);
//! - the two matrices that write into the residual stream, Wo and W2, are further scaled by
//!   1/√(2·n_layers), so that the residual stream's variance does not grow with depth (each layer
//!   adds two branches).
//!
//! Draw order: tensors in layout order (embed, layer 0 … n−1 in [`LayerTensor::of`] order,
//! rms_final, classifier), each in its row-major order; norms draw nothing.

use crate::params::{LayerTensor, ParamLayout, Params};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Standard deviation of the embedding and of every matrix before residual scaling.
pub const INIT_STD: f64 = 0.02;

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014; Vigna's public-domain `splitmix64.c`): the state advances by a fixed odd
/// constant and each output is a bijective mix of it. It passes BigCrush, its whole state is one
/// u64 (trivial to save), and it is small enough to keep here instead of depending on a crate
/// whose algorithm could change between versions and silently change the initial weights of a
/// seed or which windows a resumed run sees (the data sampler draws from it too). Seeded with
/// 1234567 its first outputs are 6457827717110365317, 3203168211198807973, 9817491932198370423
/// (the published reference values).
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

    /// Uniform in (0, 1]: the top 53 bits, shifted by one so that the logarithm in Box–Muller
    /// never sees zero.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Standard normal samples by Box–Muller: each pair of uniforms gives two normals, the second
/// kept for the next call.
#[derive(Clone, Debug)]
pub struct Normal {
    rng: SplitMix64,
    spare: Option<f64>,
}

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal {
            rng: SplitMix64::new(seed),
            spare: None,
        }
    }

    pub fn sample(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = self.rng.next_open01();
        let u2 = self.rng.next_open01();
        let r = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * angle.sin());
        r * angle.cos()
    }
}

/// Fresh parameters for `layout`, the same for the same seed on every machine.
pub fn init_params(layout: Arc<ParamLayout>, seed: u64) -> Params {
    let mut params = Params::zeros(layout.clone());
    let mut normal = Normal::new(seed);
    let mut fill = |dst: &mut [f32], std: f64| {
        for v in dst {
            *v = (normal.sample() * std) as f32;
        }
    };
    let residual_std = INIT_STD / (2.0 * layout.config.n_layers as f64).sqrt();
    fill(params.get_mut(layout.embed()), INIT_STD);
    for l in 0..layout.config.n_layers {
        for &t in LayerTensor::of(&layout.config) {
            let dst = params.layer_mut(l, t);
            match t {
                LayerTensor::RmsAtt
                | LayerTensor::RmsFfn
                | LayerTensor::QNorm
                | LayerTensor::KNorm => dst.fill(1.0),
                LayerTensor::Wo | LayerTensor::W2 => fill(dst, residual_std),
                LayerTensor::Wq
                | LayerTensor::Wk
                | LayerTensor::Wv
                | LayerTensor::W1
                | LayerTensor::W3 => fill(dst, INIT_STD),
            }
        }
    }
    params.get_mut(layout.rms_final()).fill(1.0);
    if !layout.config.tied_embedding {
        fill(params.get_mut(layout.classifier()), INIT_STD);
    }
    params
}

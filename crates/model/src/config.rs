//! Model configurations: the named presets and any other from a TOML file.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A Llama-style decoder: token embedding, pre-norm RMSNorm, rotary attention (multi-head or
/// grouped-query, causal), SwiGLU FFN, final RMSNorm, classifier tied to the embedding or not;
/// with `qk_norm`, Qwen3's per-head RMSNorm of q and k before the rotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// Model width D.
    pub dim: usize,
    /// SwiGLU hidden width H.
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads; equal to `n_heads` for multi-head attention.
    pub n_kv_heads: usize,
    /// Head width; `dim / n_heads` unless a config says otherwise (Qwen3 does).
    pub head_dim: usize,
    pub vocab: usize,
    /// Sequence length S of one training window.
    pub seq_len: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    /// The classifier reuses the embedding matrix.
    #[serde(default = "default_true")]
    pub tied_embedding: bool,
    /// Qwen3: q and k are each RMS-normalised per head (over `head_dim`, with one learned weight
    /// of `head_dim` shared by the heads) after their projection and before RoPE.
    #[serde(default)]
    pub qk_norm: bool,
}

fn default_eps() -> f32 {
    1e-5
}
fn default_theta() -> f32 {
    10000.0
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown model configuration `{0}` (known: {known})", known = ModelConfig::PRESETS.join(", "))]
    Unknown(String),
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config `{name}`: {message}")]
    Invalid { name: String, message: String },
}

impl ModelConfig {
    pub const PRESETS: [&'static str; 5] = [
        "tiny",
        "stories15m",
        "stories42m",
        "stories110m",
        "qwen3-0.6b",
    ];

    #[allow(clippy::too_many_arguments)]
    fn llama(
        name: &str,
        dim: usize,
        hidden: usize,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        vocab: usize,
        seq_len: usize,
    ) -> ModelConfig {
        ModelConfig {
            name: name.to_string(),
            dim,
            hidden,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads,
            vocab,
            seq_len,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            tied_embedding: true,
            qk_norm: false,
        }
    }

    /// The default run: small enough to train on two cores in minutes, with a 1024-token BPE
    /// vocabulary trained on the embedded corpus.
    pub fn tiny() -> ModelConfig {
        ModelConfig::llama("tiny", 128, 384, 4, 4, 4, 1024, 128)
    }

    /// A preset by name, or a TOML file if `name` ends in `.toml`.
    pub fn named(name: &str) -> Result<ModelConfig, ConfigError> {
        let config = match name {
            "tiny" => ModelConfig::tiny(),
            // llama2.c's TinyStories models.
            "stories15m" => ModelConfig::llama("stories15m", 288, 768, 6, 6, 6, 32000, 256),
            "stories42m" => ModelConfig::llama("stories42m", 512, 1376, 8, 8, 8, 32000, 1024),
            "stories110m" => ModelConfig::llama("stories110m", 768, 2048, 12, 12, 12, 32000, 256),
            // Qwen3-0.6B: GQA 16/8, head_dim 128, per-head q/k norms, tied embedding.
            "qwen3-0.6b" => ModelConfig {
                head_dim: 128,
                rope_theta: 1_000_000.0,
                norm_eps: 1e-6,
                qk_norm: true,
                ..ModelConfig::llama("qwen3-0.6b", 1024, 3072, 28, 16, 8, 151936, 256)
            },
            path if path.ends_with(".toml") => return ModelConfig::from_toml_file(path),
            other => return Err(ConfigError::Unknown(other.to_string())),
        };
        Ok(config)
    }

    pub fn from_toml_file(path: &str) -> Result<ModelConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_string(),
            source,
        })?;
        let config: ModelConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        // The file, not the name inside it, is what a user fixes.
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { message, .. } => ConfigError::Parse {
                path: path.to_string(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The sizes, by field name.
    fn sizes(&self) -> [(&'static str, usize); 8] {
        [
            ("dim", self.dim),
            ("hidden", self.hidden),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab", self.vocab),
            ("seq_len", self.seq_len),
        ]
    }

    /// Checks the relations the kernels rely on, and that every size is within
    /// [`ModelConfig::LIMITS`], before anything is sized from them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| {
            Err(ConfigError::Invalid {
                name: self.name.clone(),
                message,
            })
        };
        for ((field, value), (_, limit)) in self.sizes().into_iter().zip(Self::LIMITS) {
            if value == 0 {
                return fail(format!("{field} must be positive"));
            }
            if value > limit {
                return fail(format!(
                    "{field} = {value} is beyond the largest supported, {limit}"
                ));
            }
        }
        if self.q_dim() > Self::LIMITS[0].1 {
            return fail(format!(
                "n_heads × head_dim = {} is beyond the largest supported width, {}",
                self.q_dim(),
                Self::LIMITS[0].1
            ));
        }
        for (field, value) in [("norm_eps", self.norm_eps), ("rope_theta", self.rope_theta)] {
            if !(value.is_finite() && value > 0.0) {
                return fail(format!("{field} must be a positive number, not {value}"));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return fail(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return fail(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        Ok(())
    }

    /// The largest value of each size, in the order of the fields: beyond every
    /// published decoder, and small enough that every product of sizes the code forms (the
    /// parameter count, a tensor's bytes) fits in 64 bits.
    pub const LIMITS: [(&'static str, usize); 8] = [
        ("dim", 1 << 20),
        ("hidden", 1 << 22),
        ("n_layers", 1 << 12),
        ("n_heads", 1 << 14),
        ("n_kv_heads", 1 << 14),
        ("head_dim", 1 << 14),
        ("vocab", Self::MAX_VOCAB),
        ("seq_len", 1 << 24),
    ];

    /// The largest vocabulary a model may have (and so a tokenizer that trains for one).
    pub const MAX_VOCAB: usize = 1 << 24;

    /// Parameters of the model (of a valid config: within the limits it cannot overflow).
    pub fn parameter_count(&self) -> u64 {
        let (d, h, l, v) = (
            self.dim as u64,
            self.hidden as u64,
            self.n_layers as u64,
            self.vocab as u64,
        );
        let (q, kv) = (self.q_dim() as u64, self.kv_dim() as u64);
        let qk_norm = if self.qk_norm {
            2 * self.head_dim as u64
        } else {
            0
        };
        let per_layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * h + qk_norm;
        let classifier = if self.tied_embedding { 0 } else { v * d };
        v * d + l * per_layer + d + classifier
    }

    /// The f32 copies of its parameters every training run holds: the weights, their
    /// gradients and AdamW's two moments. A lower bound: the kernels' weights come on top
    /// (a double-buffered `stories110m` peaks at about 15 copies' worth).
    pub const TRAINING_COPIES: u64 = 4;

    /// The least memory training this model takes, in bytes: [`Self::TRAINING_COPIES`] f32
    /// copies of the parameters (activations and kernels come on top).
    pub fn training_bytes(&self) -> u64 {
        self.parameter_count()
            .saturating_mul(4 * Self::TRAINING_COPIES)
    }

    /// Q_DIM = n_heads · head_dim.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// KV_DIM = n_kv_heads · head_dim.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// FLOPs of one training window (forward, backward-dx and weight gradients: 3× the
    /// forward's matrix products), 2 per multiply-add; attention counted in full (not halved
    /// for causality), as the original counts it.
    pub fn train_flops_per_window(&self) -> f64 {
        let (d, h, v, s, l) = (
            self.dim as f64,
            self.hidden as f64,
            self.vocab as f64,
            self.seq_len as f64,
            self.n_layers as f64,
        );
        let (q, kv) = (self.q_dim() as f64, self.kv_dim() as f64);
        let per_layer = 2.0 * s * (d * q + 2.0 * d * kv + q * d + 3.0 * d * h);
        let attention = 2.0 * 2.0 * s * s * q;
        let forward = l * (per_layer + attention) + 2.0 * s * v * d;
        3.0 * forward
    }

    /// FLOPs of one window that the device kernels compute: the layers' forward, their
    /// backward-dx products and the attention backward (weight gradients and the classifier
    /// stay on the host).
    pub fn device_flops_per_window(&self) -> f64 {
        let (d, h, s, l) = (
            self.dim as f64,
            self.hidden as f64,
            self.seq_len as f64,
            self.n_layers as f64,
        );
        let (q, kv) = (self.q_dim() as f64, self.kv_dim() as f64);
        let per_layer = 2.0 * s * (d * q + 2.0 * d * kv + q * d + 3.0 * d * h);
        let attention = 2.0 * 2.0 * s * s * q;
        l * (2.0 * per_layer + 3.0 * attention)
    }

    /// Query heads per key/value head.
    pub fn gqa_ratio(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamLayout;

    fn small() -> ModelConfig {
        ModelConfig::tiny()
    }

    fn refusal(config: &ModelConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_limits_name_the_sizes_in_their_order() {
        let names: Vec<&str> = small().sizes().iter().map(|(n, _)| *n).collect();
        let limits: Vec<&str> = ModelConfig::LIMITS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, limits);
    }

    #[test]
    fn a_zero_or_oversized_field_is_refused_by_name() {
        let set = |field: &str, value: usize| {
            let mut c = small();
            match field {
                "dim" => c.dim = value,
                "hidden" => c.hidden = value,
                "n_layers" => c.n_layers = value,
                "n_heads" => c.n_heads = value,
                "n_kv_heads" => c.n_kv_heads = value,
                "head_dim" => c.head_dim = value,
                "vocab" => c.vocab = value,
                "seq_len" => c.seq_len = value,
                _ => unreachable!(),
            }
            c
        };
        for (field, limit) in ModelConfig::LIMITS {
            assert_eq!(
                refusal(&set(field, 0)),
                format!("config `tiny`: {field} must be positive")
            );
            assert_eq!(
                refusal(&set(field, limit + 1)),
                format!(
                    "config `tiny`: {field} = {} is beyond the largest supported, {limit}",
                    limit + 1
                )
            );
        }
        assert!(refusal(&set("n_layers", 1_000_000_000_000)).contains("n_layers = 1000000000000"));
        assert!(refusal(&set("hidden", 1 << 62)).contains("hidden = 4611686018427387904"));
        // Each within its limit, but heads × head_dim wider than any width.
        let mut wide = small();
        (wide.n_heads, wide.n_kv_heads, wide.head_dim) = (1 << 10, 1 << 10, 1 << 12);
        assert!(
            refusal(&wide).contains("n_heads × head_dim = 4194304"),
            "{}",
            refusal(&wide)
        );
    }

    #[test]
    fn norm_eps_and_rope_theta_must_be_positive_numbers() {
        for (eps, theta) in [
            (f32::NAN, 1e4),
            (0.0, 1e4),
            (-1e-5, 1e4),
            (1e-5, f32::INFINITY),
            (1e-5, 0.0),
        ] {
            let c = ModelConfig {
                norm_eps: eps,
                rope_theta: theta,
                ..small()
            };
            let text = refusal(&c);
            let field = if eps.is_finite() && eps > 0.0 {
                "rope_theta"
            } else {
                "norm_eps"
            };
            assert!(
                text.contains(&format!("{field} must be a positive number")),
                "{text}"
            );
        }
    }

    #[test]
    fn the_parameter_count_is_the_layouts_length() {
        for name in ModelConfig::PRESETS {
            let c = ModelConfig::named(name).unwrap();
            c.validate().unwrap();
            for (tied, qk_norm) in [(true, false), (false, false), (true, true), (false, true)] {
                let c = ModelConfig {
                    tied_embedding: tied,
                    qk_norm,
                    ..c.clone()
                };
                assert_eq!(
                    c.parameter_count(),
                    ParamLayout::new(&c).len as u64,
                    "{name}"
                );
            }
        }
        // The largest config the limits allow still counts without overflow.
        let mut huge = small();
        for (i, (_, limit)) in ModelConfig::LIMITS.iter().enumerate() {
            match i {
                0 => huge.dim = *limit,
                1 => huge.hidden = *limit,
                2 => huge.n_layers = *limit,
                6 => huge.vocab = *limit,
                _ => {}
            }
        }
        (huge.n_heads, huge.n_kv_heads, huge.head_dim) = (1 << 6, 1 << 6, 1 << 14);
        huge.validate().unwrap();
        let d = 1u128 << 20;
        let want = (1u128 << 24) * d + (1 << 12) * (2 * d + 4 * d * d + 3 * d * (1 << 22)) + d;
        assert_eq!(u128::from(huge.parameter_count()), want);
        assert_eq!(u128::from(huge.training_bytes()), want * 16);
    }
}

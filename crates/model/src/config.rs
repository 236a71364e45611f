//! Model configurations: the named presets and any other from a TOML file.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A Llama-style decoder: token embedding, pre-norm RMSNorm, rotary attention (multi-head or
/// grouped-query, causal), SwiGLU FFN, final RMSNorm, classifier tied to the embedding or not.
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
            // Qwen3-0.6B's shapes (GQA 16/8, head_dim 128), with the llama conventions above.
            "qwen3-0.6b" => ModelConfig {
                head_dim: 128,
                rope_theta: 1_000_000.0,
                norm_eps: 1e-6,
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
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations the kernels rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| {
            Err(ConfigError::Invalid {
                name: self.name.clone(),
                message,
            })
        };
        if [
            self.dim,
            self.hidden,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.vocab,
            self.seq_len,
        ]
        .contains(&0)
        {
            return fail("every size must be positive".into());
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

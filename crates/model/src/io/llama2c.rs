//! llama2.c model files, the legacy format `run.c` reads (so that the published stories15M,
//! stories42M and stories110M checkpoints load).
//!
//! Layout, all little-endian:
//! - header, 7 × i32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
//!   negative vocab_size means a separate classifier matrix follows at the end;
//! - f32 arrays, each layer-major and contiguous across layers: token_embedding `[V][D]`,
//!   rms_att `[L][D]`, wq `[L][D][D]`, wk `[L][KV][D]`, wv `[L][KV][D]`, wo `[L][D][D]`, rms_ffn `[L][D]`,
//!   w1 `[L][H][D]`, w2 `[L][D][H]`, w3 `[L][H][D]`, rms_final `[D]`;
//! - two legacy RoPE tables, freq_cis_real and freq_cis_imag, `[seq_len][head_dim/2]` each, which
//!   `run.c` skips (it computes RoPE itself);
//! - wcls `[V][D]` when the classifier is not shared.
//!
//! The format has no head_dim, RoPE base or norm epsilon: `run.c` hard-codes dim/n_heads, 10000
//! and 1e-5, so a configuration that differs cannot be exported (an error, not a file that
//! `run.c` would silently run differently).

use super::atomic::atomic_write;
use super::{read_f32s, write_f32s};
use crate::config::ModelConfig;
use crate::params::{LayerTensor, ParamLayout, Params};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Size of the header in bytes.
pub const HEADER_BYTES: u64 = 28;

/// The first word of llama2.c's newer versioned exports ("ak42"), which `run.c` cannot read.
const VERSIONED_MAGIC: i32 = 0x616b_3432;

/// What `run.c` hard-codes and the file therefore cannot say.
const RUN_C_ROPE_THETA: f32 = 10000.0;
const RUN_C_NORM_EPS: f32 = 1e-5;

/// The per-layer arrays in file order (each one for all layers before the next).
const RUN_C_LAYER_ORDER: [LayerTensor; 9] = [
    LayerTensor::RmsAtt,
    LayerTensor::Wq,
    LayerTensor::Wk,
    LayerTensor::Wv,
    LayerTensor::Wo,
    LayerTensor::RmsFfn,
    LayerTensor::W1,
    LayerTensor::W2,
    LayerTensor::W3,
];

#[derive(Debug, Error)]
pub enum Llama2cError {
    #[error("cannot read llama2.c model file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write llama2.c model file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "llama2.c model file {} is truncated: {len} bytes, shorter than the {HEADER_BYTES}-byte header",
        path.display()
    )]
    TruncatedHeader { path: PathBuf, len: u64 },
    #[error("llama2.c model file {} has an inconsistent header ({header}): {problem}", path.display())]
    BadHeader {
        path: PathBuf,
        header: Header,
        problem: String,
    },
    #[error(
        "llama2.c model file {} is {actual} bytes but its header ({header}) calls for {expected}: {}",
        path.display(),
        if actual < expected { "the file is truncated" } else { "trailing bytes after the last tensor" }
    )]
    SizeMismatch {
        path: PathBuf,
        header: Header,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{} is a versioned llama2.c export (magic \"ak42\", version {version}); only the legacy \
         format that run.c reads is supported (llama2.c's export.py --version 0)",
        path.display()
    )]
    Versioned { path: PathBuf, version: i32 },
    #[error("model `{name}` cannot be written as a llama2.c file: {problem}")]
    Unrepresentable { name: String, problem: String },
}

/// The 7-word header, exactly as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dim: i32,
    pub hidden_dim: i32,
    pub n_layers: i32,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    /// Negative when the classifier is stored separately.
    pub vocab_size: i32,
    pub seq_len: i32,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dim {}, hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}",
            self.dim,
            self.hidden_dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.vocab_size,
            self.seq_len
        )
    }
}

impl Header {
    pub fn from_bytes(bytes: [u8; HEADER_BYTES as usize]) -> Header {
        let word = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        Header {
            dim: word(0),
            hidden_dim: word(1),
            n_layers: word(2),
            n_heads: word(3),
            n_kv_heads: word(4),
            vocab_size: word(5),
            seq_len: word(6),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_BYTES as usize] {
        let words = [
            self.dim,
            self.hidden_dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.vocab_size,
            self.seq_len,
        ];
        let mut bytes = [0u8; HEADER_BYTES as usize];
        for (i, w) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        bytes
    }

    /// The header of a model, if llama2.c can express it.
    pub fn for_config(c: &ModelConfig) -> Result<Header, Llama2cError> {
        let fail = |problem: String| Llama2cError::Unrepresentable {
            name: c.name.clone(),
            problem,
        };
        if c.q_dim() != c.dim {
            return Err(fail(format!(
                "n_heads {} × head_dim {} must equal dim {} (run.c derives head_dim = dim / n_heads)",
                c.n_heads, c.head_dim, c.dim
            )));
        }
        if c.qk_norm {
            return Err(fail(
                "its per-head q/k norms (Qwen3) are not part of run.c's model".into(),
            ));
        }
        if c.rope_theta != RUN_C_ROPE_THETA {
            return Err(fail(format!(
                "rope_theta {} is not the {RUN_C_ROPE_THETA} that run.c hard-codes",
                c.rope_theta
            )));
        }
        if c.norm_eps != RUN_C_NORM_EPS {
            return Err(fail(format!(
                "norm_eps {} is not the {RUN_C_NORM_EPS} that run.c hard-codes",
                c.norm_eps
            )));
        }
        let word = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| fail(format!("{what} {v} does not fit in an i32")))
        };
        let vocab = word("vocab", c.vocab)?;
        Ok(Header {
            dim: word("dim", c.dim)?,
            hidden_dim: word("hidden", c.hidden)?,
            n_layers: word("n_layers", c.n_layers)?,
            n_heads: word("n_heads", c.n_heads)?,
            n_kv_heads: word("n_kv_heads", c.n_kv_heads)?,
            vocab_size: if c.tied_embedding { vocab } else { -vocab },
            seq_len: word("seq_len", c.seq_len)?,
        })
    }

    /// The classifier is the embedding (a positive vocab_size).
    pub fn shared_classifier(&self) -> bool {
        self.vocab_size > 0
    }

    /// The relations `run.c` relies on; the problem in words if one fails.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("dim", self.dim),
            ("hidden_dim", self.hidden_dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("seq_len", self.seq_len),
        ];
        for (what, v) in sizes {
            if v <= 0 {
                return Err(format!("{what} is {v}, not positive"));
            }
        }
        if self.vocab_size == 0 || self.vocab_size == i32::MIN {
            return Err(format!(
                "vocab_size {} is not a valid size",
                self.vocab_size
            ));
        }
        if self.dim % self.n_heads != 0 {
            return Err(format!(
                "n_heads {} does not divide dim {}",
                self.n_heads, self.dim
            ));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(format!(
                "n_kv_heads {} does not divide n_heads {}",
                self.n_kv_heads, self.n_heads
            ));
        }
        let head_dim = self.dim / self.n_heads;
        if head_dim % 2 != 0 {
            return Err(format!(
                "head_dim = dim / n_heads = {head_dim} is odd; RoPE rotates pairs"
            ));
        }
        Ok(())
    }

    /// Our configuration for a valid header, with what `run.c` hard-codes.
    pub fn config(&self) -> ModelConfig {
        let dim = self.dim as usize;
        let n_heads = self.n_heads as usize;
        ModelConfig {
            name: "llama2c".to_string(),
            dim,
            hidden: self.hidden_dim as usize,
            n_layers: self.n_layers as usize,
            n_heads,
            n_kv_heads: self.n_kv_heads as usize,
            head_dim: dim / n_heads,
            vocab: self.vocab_size.unsigned_abs() as usize,
            seq_len: self.seq_len as usize,
            norm_eps: RUN_C_NORM_EPS,
            rope_theta: RUN_C_ROPE_THETA,
            tied_embedding: self.shared_classifier(),
            qk_norm: false,
        }
    }

    /// Floats in each of the two legacy RoPE tables.
    fn freq_table_len(&self) -> u64 {
        self.seq_len as u64 * (self.dim / self.n_heads) as u64 / 2
    }

    /// The exact size in bytes of a file with this (valid) header, computed from the header
    /// alone (independently of [`ParamLayout`]); `None` if it overflows u64.
    pub fn expected_file_size(&self) -> Option<u64> {
        let d = self.dim as u64;
        let h = self.hidden_dim as u64;
        let l = self.n_layers as u64;
        let v = self.vocab_size.unsigned_abs() as u64;
        let kv = self.n_kv_heads as u64 * (d / self.n_heads as u64);
        // Per layer: two norms, wq and wo (D×D each), wk and wv (KV×D each), w1, w2, w3 (H×D).
        let per_layer = (2 * d)
            .checked_add(d.checked_mul(d)?.checked_mul(2)?)?
            .checked_add(kv.checked_mul(d)?.checked_mul(2)?)?
            .checked_add(h.checked_mul(d)?.checked_mul(3)?)?;
        let classifiers = if self.shared_classifier() { 1 } else { 2 };
        let floats = v
            .checked_mul(d)?
            .checked_mul(classifiers)?
            .checked_add(l.checked_mul(per_layer)?)?
            .checked_add(d)?
            .checked_add(self.freq_table_len().checked_mul(2)?)?;
        floats.checked_mul(4)?.checked_add(HEADER_BYTES)
    }
}

/// Reads a llama2.c model file into a configuration named "llama2c" and its parameters.
///
/// The header is checked, and the file size must match it exactly before anything large is
/// allocated, so a corrupt header cannot ask for an absurd buffer.
pub fn read(path: &Path) -> Result<Params, Llama2cError> {
    let read_err = |source| Llama2cError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let actual = file.metadata().map_err(read_err)?.len();
    if actual < HEADER_BYTES {
        return Err(Llama2cError::TruncatedHeader {
            path: path.to_path_buf(),
            len: actual,
        });
    }
    let mut src = BufReader::with_capacity(1 << 20, file);
    let mut bytes = [0u8; HEADER_BYTES as usize];
    src.read_exact(&mut bytes).map_err(read_err)?;
    let header = Header::from_bytes(bytes);
    if header.dim == VERSIONED_MAGIC {
        return Err(Llama2cError::Versioned {
            path: path.to_path_buf(),
            version: header.hidden_dim,
        });
    }
    let bad_header = |problem: String| Llama2cError::BadHeader {
        path: path.to_path_buf(),
        header,
        problem,
    };
    header.validate().map_err(bad_header)?;
    let expected = header
        .expected_file_size()
        .ok_or_else(|| bad_header("the sizes overflow 64 bits".into()))?;
    if expected != actual {
        return Err(Llama2cError::SizeMismatch {
            path: path.to_path_buf(),
            header,
            expected,
            actual,
        });
    }
    let config = header.config();
    config.validate().map_err(|e| bad_header(e.to_string()))?;
    let mut params = Params::zeros(Arc::new(ParamLayout::new(&config)));
    read_body(&mut src, &header, &mut params).map_err(read_err)?;
    Ok(params)
}

/// Reads everything after the header into `params`, whose layout matches the header.
fn read_body(src: &mut BufReader<File>, header: &Header, params: &mut Params) -> io::Result<()> {
    let layout = params.layout.clone();
    read_f32s(src, params.get_mut(layout.embed()))?;
    for t in RUN_C_LAYER_ORDER {
        for l in 0..layout.config.n_layers {
            read_f32s(src, params.layer_mut(l, t))?;
        }
    }
    read_f32s(src, params.get_mut(layout.rms_final()))?;
    // run.c ignores the legacy RoPE tables; so do we.
    src.seek_relative(2 * 4 * header.freq_table_len() as i64)?;
    if !header.shared_classifier() {
        read_f32s(src, params.get_mut(layout.classifier()))?;
    }
    Ok(())
}

/// Writes `params` as a llama2.c model file, atomically. The legacy RoPE tables get the values
/// llama2.c's legacy export wrote (cos and sin of p·θ_i), though `run.c` never reads them.
pub fn write(path: &Path, params: &Params) -> Result<(), Llama2cError> {
    let header = Header::for_config(&params.layout.config)?;
    atomic_write(path, |dst| write_all(dst, &header, params)).map_err(|source| {
        Llama2cError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn write_all(dst: &mut dyn Write, header: &Header, params: &Params) -> io::Result<()> {
    let layout = &params.layout;
    dst.write_all(&header.to_bytes())?;
    write_f32s(dst, params.get(layout.embed()))?;
    for t in RUN_C_LAYER_ORDER {
        for l in 0..layout.config.n_layers {
            write_f32s(dst, params.layer(l, t))?;
        }
    }
    write_f32s(dst, params.get(layout.rms_final()))?;
    let (cos, sin) = legacy_freq_tables(&layout.config);
    write_f32s(dst, &cos)?;
    write_f32s(dst, &sin)?;
    if !header.shared_classifier() {
        write_f32s(dst, params.get(layout.classifier()))?;
    }
    Ok(())
}

/// freq_cis_real and freq_cis_imag, [seq_len][head_dim/2]: cos and sin of p·θ^(−2i/head_dim).
fn legacy_freq_tables(c: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let half = c.head_dim / 2;
    let mut cos = Vec::with_capacity(c.seq_len * half);
    let mut sin = Vec::with_capacity(c.seq_len * half);
    for p in 0..c.seq_len {
        for i in 0..half {
            let freq = (c.rope_theta as f64).powf(-2.0 * i as f64 / c.head_dim as f64);
            let angle = p as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

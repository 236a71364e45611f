//! safetensors files with Hugging Face Llama tensor names, so models move to and from the
//! `transformers` ecosystem.
//!
//! Names: `model.embed_tokens.weight`, `model.layers.{l}.self_attn.{q,k,v,o}_proj.weight`,
//! `model.layers.{l}.mlp.{gate,up,down}_proj.weight` (gate = W1, up = W3, down = W2),
//! `model.layers.{l}.input_layernorm.weight`, `model.layers.{l}.post_attention_layernorm.weight`,
//! `model.norm.weight`, and `lm_head.weight` when the classifier is not tied. Matrices are
//! `[out, in]` in both worlds; norm weights are 1-D.
//!
//! RoPE: Hugging Face rotates the two halves of each head (`x[i]` with `x[i + head_dim/2]`); we rotate
//! interleaved pairs (`x[2i]` with `x[2i+1]`), like llama2.c. The two are the same model once the rows
//! of Wq and Wk are permuted head by head (see [`half_split_source_rows`]), which export and
//! import do.
//!
//! Export writes F32 and records our configuration in the header's `__metadata__` (as TOML under
//! [`CONFIG_KEY`]), next to the `"format": "pt"` that `transformers` expects. Import accepts F32,
//! F16 and BF16 and takes the configuration from the caller (a Hugging Face checkpoint keeps it
//! in config.json) or, failing that, from that metadata.

use super::atomic::atomic_write;
use crate::config::ModelConfig;
use crate::params::{LayerTensor, ParamLayout, Params};
use half::{bf16, f16};
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// The `__metadata__` key under which export stores our configuration.
pub const CONFIG_KEY: &str = "anetrain.config";

#[derive(Debug, Error)]
pub enum SafetensorsError {
    #[error("cannot read safetensors file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write safetensors file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} is not a valid safetensors file: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: no model configuration was given and the file records none (a Hugging Face checkpoint keeps it in config.json)", path.display())]
    NoConfig { path: PathBuf },
    #[error("{}: invalid model configuration: {message}", path.display())]
    BadConfig { path: PathBuf, message: String },
    #[error("{}: tensor `{name}` is missing", path.display())]
    Missing { path: PathBuf, name: String },
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{}: tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 are supported", path.display())]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{}: tensor `{name}` is not part of a Llama model of this configuration (a different architecture?)", path.display())]
    Unexpected { path: PathBuf, name: String },
    #[error("{}: the configuration ties the classifier to the embedding, but `lm_head.weight` differs from `model.embed_tokens.weight`", path.display())]
    UntiedHead { path: PathBuf },
}

/// Where a tensor lives in our parameters.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Embed,
    Layer(usize, LayerTensor),
    RmsFinal,
    Classifier,
}

impl Slot {
    fn range(self, layout: &ParamLayout) -> Range<usize> {
        match self {
            Slot::Embed => layout.embed(),
            Slot::Layer(l, t) => layout.layer(l, t),
            Slot::RmsFinal => layout.rms_final(),
            Slot::Classifier => layout.classifier(),
        }
    }
}

/// One tensor of the Hugging Face checkpoint and where it lives in ours.
struct HfTensor {
    name: String,
    shape: Vec<usize>,
    slot: Slot,
    /// `Some(heads)` for Wq and Wk, whose rows are permuted between RoPE conventions (and
    /// `Some(1)` for the q/k norms, ordered like one head's rows).
    rope_heads: Option<usize>,
}

impl HfTensor {
    /// Values per row: a vector (a norm's weight) is one column.
    fn columns(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
}

/// Every tensor of a model under its Hugging Face name, in our layout order; export and import
/// both use this one table. It is lazy, and it needs no [`ParamLayout`], so that import can check
/// a file's tensors against a configuration before allocating anything that size (a damaged
/// configuration could otherwise ask for terabytes).
fn hf_tensors(c: &ModelConfig) -> impl Iterator<Item = HfTensor> + '_ {
    let entry = |name: String, shape: Vec<usize>, slot, rope_heads| HfTensor {
        name,
        shape,
        slot,
        rope_heads,
    };
    let embed = entry(
        "model.embed_tokens.weight".into(),
        vec![c.vocab, c.dim],
        Slot::Embed,
        None,
    );
    let layers = (0..c.n_layers).flat_map(move |l| {
        LayerTensor::of(c).iter().map(move |&t| {
            let (suffix, rope_heads) = match t {
                LayerTensor::RmsAtt => ("input_layernorm", None),
                LayerTensor::Wq => ("self_attn.q_proj", Some(c.n_heads)),
                LayerTensor::Wk => ("self_attn.k_proj", Some(c.n_kv_heads)),
                LayerTensor::Wv => ("self_attn.v_proj", None),
                LayerTensor::Wo => ("self_attn.o_proj", None),
                LayerTensor::RmsFfn => ("post_attention_layernorm", None),
                LayerTensor::W1 => ("mlp.gate_proj", None),
                LayerTensor::W2 => ("mlp.down_proj", None),
                LayerTensor::W3 => ("mlp.up_proj", None),
                // A per-head norm's weight is ordered like the rows of one head.
                LayerTensor::QNorm => ("self_attn.q_norm", Some(1)),
                LayerTensor::KNorm => ("self_attn.k_norm", Some(1)),
            };
            let [rows, cols] = t.shape(c);
            let shape = if t.is_matrix() {
                vec![rows, cols]
            } else {
                vec![cols]
            };
            let name = format!("model.layers.{l}.{suffix}.weight");
            entry(name, shape, Slot::Layer(l, t), rope_heads)
        })
    });
    let norm = entry(
        "model.norm.weight".into(),
        vec![c.dim],
        Slot::RmsFinal,
        None,
    );
    let head = (!c.tied_embedding).then(|| {
        entry(
            "lm_head.weight".into(),
            vec![c.vocab, c.dim],
            Slot::Classifier,
            None,
        )
    });
    std::iter::once(embed)
        .chain(layers)
        .chain(std::iter::once(norm))
        .chain(head)
}

/// For one head of `head_dim` rows in Hugging Face's half-split order, the interleaved row each
/// comes from: HF row `r·head_dim/2 + i` is our row `2i + r` (r ∈ {0, 1}), i.e. HF's rows are our
/// rows [0, 2, 4, …, 1, 3, 5, …].
///
/// This is the permutation of Meta's `convert_llama_weights_to_hf.py` (`w.view(n_heads,
/// head_dim/2, 2, dim).transpose(1, 2)`), which llama2.c's export.py applies on export
/// (`permute_original`) and inverts on import (`permute_reverse`, `view(n_heads, 2, head_dim/2,
/// dim).transpose(1, 2)`). Why it works: HF rotates (`x[i]`, `x[i + head_dim/2]`) by θ_i, and those two
/// HF rows are our rows 2i and 2i+1, the pair we rotate by the same θ_i.
pub fn half_split_source_rows(head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..head_dim).map(|j| 2 * (j % half) + j / half).collect()
}

/// Our (interleaved-pair) rows of a `[n_heads·head_dim][cols]` matrix in Hugging Face's order.
pub fn interleaved_to_half_split(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let head_dim = w.len() / (n_heads * cols);
    let src = half_split_source_rows(head_dim);
    let mut out = vec![0.0; w.len()];
    for h in 0..n_heads {
        for (j, &s) in src.iter().enumerate() {
            let to = (h * head_dim + j) * cols;
            let from = (h * head_dim + s) * cols;
            out[to..to + cols].copy_from_slice(&w[from..from + cols]);
        }
    }
    out
}

/// The inverse of [`interleaved_to_half_split`]: Hugging Face's rows back in our order.
pub fn half_split_to_interleaved(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let head_dim = w.len() / (n_heads * cols);
    let src = half_split_source_rows(head_dim);
    let mut out = vec![0.0; w.len()];
    for h in 0..n_heads {
        for (j, &s) in src.iter().enumerate() {
            let to = (h * head_dim + s) * cols;
            let from = (h * head_dim + j) * cols;
            out[to..to + cols].copy_from_slice(&w[from..from + cols]);
        }
    }
    out
}

/// Writes `params` as F32 safetensors with Hugging Face Llama names, atomically.
///
/// The file is streamed tensor by tensor (only one permuted Wq/Wk copy is held at a time), so
/// exporting a large model does not need a second copy of it in memory.
pub fn write(path: &Path, params: &Params) -> Result<(), SafetensorsError> {
    let write_err = |source| SafetensorsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tensors: Vec<HfTensor> = hf_tensors(&params.layout.config).collect();
    let header = header_bytes(&params.layout, &tensors).map_err(write_err)?;
    atomic_write(path, |dst| {
        dst.write_all(&(header.len() as u64).to_le_bytes())?;
        dst.write_all(&header)?;
        for t in &tensors {
            write_tensor(dst, t, params)?;
        }
        Ok(())
    })
    .map_err(write_err)
}

/// The JSON header, built with the safetensors crate's own header types (which check the
/// offsets), tensors in our layout order, padded with spaces to a multiple of 8 bytes as the
/// crate pads it.
fn header_bytes(layout: &ParamLayout, tensors: &[HfTensor]) -> io::Result<Vec<u8>> {
    let mut infos = Vec::with_capacity(tensors.len());
    let mut at = 0;
    for t in tensors {
        let bytes = t.slot.range(layout).len() * 4;
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: Dtype::F32,
                shape: t.shape.clone(),
                data_offsets: (at, at + bytes),
            },
        ));
        at += bytes;
    }
    let config_toml = toml::to_string(&layout.config).map_err(io::Error::other)?;
    let extra = BTreeMap::from([("format", "pt"), (CONFIG_KEY, config_toml.as_str())]);
    // The crate's own check of the offsets; its serialisation is not used, since it keeps
    // `__metadata__` in a HashMap whose order changes from process to process.
    let owned = extra.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Metadata::new(Some(owned.collect()), infos.clone())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut json = serde_json::to_vec(&Header {
        metadata: extra,
        tensors: &infos,
    })?;
    json.resize(json.len().next_multiple_of(8), b' ');
    Ok(json)
}

/// A safetensors header as the crate writes one (`__metadata__`, then the tensors in the
/// order of their data), with the metadata's keys in sorted order, so that one checkpoint
/// always exports to the same bytes.
struct Header<'a> {
    metadata: BTreeMap<&'a str, &'a str>,
    tensors: &'a [(String, TensorInfo)],
}

impl serde::Serialize for Header<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry("__metadata__", &self.metadata)?;
        for (name, info) in self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

fn write_tensor(dst: &mut dyn Write, t: &HfTensor, params: &Params) -> io::Result<()> {
    let data = params.get(t.slot.range(&params.layout));
    match t.rope_heads {
        Some(n_heads) => {
            let permuted = interleaved_to_half_split(data, n_heads, t.columns());
            super::write_f32s(dst, &permuted)
        }
        None => super::write_f32s(dst, data),
    }
}

/// Reads a safetensors file with Hugging Face Llama names into parameters of `config`, or of the
/// configuration recorded by our export when `config` is `None`.
///
/// Every tensor of the model must be present with its exact shape. A tensor that the model does
/// not have is an error (Qwen's q/k norms or attention biases would otherwise be dropped
/// silently), except the `rotary_emb.inv_freq` buffers old checkpoints carry, which RoPE
/// recomputes. A tied configuration accepts an `lm_head.weight` only if it equals the embedding.
pub fn read(path: &Path, config: Option<&ModelConfig>) -> Result<Params, SafetensorsError> {
    read_shards(&[path.to_path_buf()], config)
}

/// [`read`] of a model whose tensors are spread over several files (the shards a Hugging Face
/// `model.safetensors.index.json` lists); the configuration recorded in the first is used when
/// none is given.
pub fn read_shards(
    paths: &[PathBuf],
    config: Option<&ModelConfig>,
) -> Result<Params, SafetensorsError> {
    let Some(first) = paths.first() else {
        return Err(SafetensorsError::Format {
            path: PathBuf::new(),
            message: "no files to read".into(),
        });
    };
    let mut bytes = Vec::with_capacity(paths.len());
    for path in paths {
        bytes.push(
            std::fs::read(path).map_err(|source| SafetensorsError::Read {
                path: path.clone(),
                source,
            })?,
        );
    }
    let mut files = Vec::with_capacity(paths.len());
    for (path, bytes) in paths.iter().zip(&bytes) {
        files.push(
            SafeTensors::deserialize(bytes).map_err(|e| SafetensorsError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?,
        );
    }
    let config = match config {
        Some(c) => c.clone(),
        None => recorded_config(first, &bytes[0])?,
    };
    config.validate().map_err(|e| SafetensorsError::BadConfig {
        path: first.clone(),
        message: e.to_string(),
    })?;
    // The file that holds a tensor (the first, for a tensor none holds: it is reported there).
    let names: Vec<Vec<&str>> = files.iter().map(|f| f.names()).collect();
    let holder = |name: &str| names.iter().position(|n| n.contains(&name)).unwrap_or(0);
    // Check before allocating: every tensor present, shaped and typed as expected. The table
    // stops at the first missing tensor, so its length is bounded by the files'.
    let mut tensors = Vec::new();
    for t in hf_tensors(&config) {
        let i = holder(&t.name);
        let view = checked_view(&paths[i], &files[i], &t.name, &t.shape)?;
        tensors.push((t, view));
    }
    for (path, file) in paths.iter().zip(&files) {
        reject_unexpected(path, file, &tensors)?;
    }

    let mut params = Params::zeros(Arc::new(ParamLayout::new(&config)));
    for (t, view) in &tensors {
        let values = to_f32(view);
        let values = match t.rope_heads {
            Some(heads) => half_split_to_interleaved(&values, heads, t.columns()),
            None => values,
        };
        let range = t.slot.range(&params.layout);
        params.get_mut(range).copy_from_slice(&values);
    }
    let head = holder("lm_head.weight");
    if config.tied_embedding && names[head].contains(&"lm_head.weight") {
        let shape = [config.vocab, config.dim];
        let view = checked_view(&paths[head], &files[head], "lm_head.weight", &shape)?;
        if to_f32(&view) != params.get(params.layout.embed()) {
            return Err(SafetensorsError::UntiedHead {
                path: paths[head].clone(),
            });
        }
    }
    Ok(params)
}

/// The configuration our export recorded in `__metadata__`.
fn recorded_config(path: &Path, bytes: &[u8]) -> Result<ModelConfig, SafetensorsError> {
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| SafetensorsError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let text = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_KEY))
        .ok_or_else(|| SafetensorsError::NoConfig {
            path: path.to_path_buf(),
        })?;
    let bad = |message: String| SafetensorsError::BadConfig {
        path: path.to_path_buf(),
        message,
    };
    let config: ModelConfig = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    // A damaged number must not overflow the products that make the expected shapes
    // (q_dim = n_heads · head_dim); any real model is far below this bound.
    let sizes = [
        config.dim,
        config.hidden,
        config.n_layers,
        config.n_heads,
        config.n_kv_heads,
        config.head_dim,
        config.vocab,
        config.seq_len,
    ];
    if sizes.iter().any(|&n| n > i32::MAX as usize) {
        return Err(bad(format!(
            "recorded config `{}`: a size is over 2^31",
            config.name
        )));
    }
    Ok(config)
}

/// Fails on the first tensor in the file that the model has no place for.
fn reject_unexpected(
    path: &Path,
    file: &SafeTensors<'_>,
    tensors: &[(HfTensor, TensorView<'_>)],
) -> Result<(), SafetensorsError> {
    let mut names = file.names();
    // Sorted so that the error names the same tensor every time.
    names.sort_unstable();
    for name in names {
        let known = tensors.iter().any(|(t, _)| t.name == name)
            || name == "lm_head.weight"
            || name.ends_with(".rotary_emb.inv_freq");
        if !known {
            return Err(SafetensorsError::Unexpected {
                path: path.to_path_buf(),
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

/// A tensor of the file, after checking that it exists, has `shape` and a float type we read.
fn checked_view<'a>(
    path: &Path,
    file: &SafeTensors<'a>,
    name: &str,
    shape: &[usize],
) -> Result<TensorView<'a>, SafetensorsError> {
    let view = file.tensor(name).map_err(|_| SafetensorsError::Missing {
        path: path.to_path_buf(),
        name: name.to_string(),
    })?;
    if view.shape() != shape {
        return Err(SafetensorsError::Shape {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: shape.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(SafetensorsError::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        });
    }
    Ok(view)
}

/// The values of a view that [`checked_view`] accepted, widened to f32 (exactly).
fn to_f32(view: &TensorView<'_>) -> Vec<f32> {
    let data = view.data();
    match view.dtype() {
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

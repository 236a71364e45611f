//! Hugging Face model folders, as `save_pretrained` writes them: `config.json`, the weights in
//! `model.safetensors` or in the shards `model.safetensors.index.json` lists, and (read by the
//! tokenizer code, not here) `tokenizer.json`. [`write_folder`] writes one that transformers
//! loads as it is.
//!
//! `LlamaForCausalLM` and `Qwen3ForCausalLM` are read. Whatever else a config asks for that the
//! model does not compute (another architecture, rope scaling, biases, sliding-window
//! attention, an activation other than SiLU) is refused, naming the field and its value, rather
//! than loaded into a model that would compute something else.

use super::atomic::write_atomic;
use super::safetensors::{self, read_shards, SafetensorsError};
use crate::config::ModelConfig;
use crate::params::Params;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The training window of a model read from a folder: its context, up to this many tokens.
pub const MAX_WINDOW: usize = 1024;

#[derive(Debug, Error)]
pub enum HfError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: {field} = {value}: {why}", path.display())]
    Unsupported {
        path: PathBuf,
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("{}: no model.safetensors and no model.safetensors.index.json", dir.display())]
    NoWeights { dir: PathBuf },
    #[error(transparent)]
    Weights(#[from] SafetensorsError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: holds `{file}`, which an export does not write: choose an empty or new folder",
        dir.display()
    )]
    NotAnExport { dir: PathBuf, file: String },
    #[error(
        "{}: a model folder that anetrain did not export (no {EXPORT_MARKER}): choose an empty \
         or new folder, so that it is not replaced",
        dir.display()
    )]
    NotOurExport { dir: PathBuf },
    #[error(
        "cannot put the export in place at {}: {source}; the earlier export is kept at {}",
        dir.display(),
        kept.display()
    )]
    Replace {
        dir: PathBuf,
        kept: PathBuf,
        source: std::io::Error,
    },
}

/// The fields of `config.json` that decide the model; the others are left alone.
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    /// transformers 4: scaling beside a top-level `rope_theta`.
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5: `{"rope_theta": …, "rope_type": "default", …}`.
    rope_parameters: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    /// Qwen3: attention over a window in some layers.
    use_sliding_window: Option<bool>,
    layer_types: Option<Vec<String>>,
}

/// The model `dir/config.json` describes, named after the folder.
pub fn read_config(dir: &Path) -> Result<ModelConfig, HfError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| HfError::Read {
        path: path.clone(),
        source,
    })?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| HfError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let unsupported = |field: &'static str, value: String, why: &str| HfError::Unsupported {
        path: path.clone(),
        field,
        value,
        why: why.to_string(),
    };
    let architecture = hf
        .architectures
        .as_ref()
        .and_then(|a| a.first())
        .map_or("none", String::as_str);
    let qk_norm = match architecture {
        "LlamaForCausalLM" => false,
        "Qwen3ForCausalLM" => true,
        other => {
            return Err(unsupported(
                "architectures",
                other.into(),
                "only LlamaForCausalLM and Qwen3ForCausalLM are read",
            ))
        }
    };
    if hf.use_sliding_window == Some(true) {
        return Err(unsupported(
            "use_sliding_window",
            "true".into(),
            "attention is over the whole window",
        ));
    }
    if let Some(other) = hf
        .layer_types
        .iter()
        .flatten()
        .find(|t| t.as_str() != "full_attention")
    {
        return Err(unsupported(
            "layer_types",
            other.clone(),
            "every layer's attention is full_attention",
        ));
    }
    // Plain RoPE only: a scaling of any kind (linear, dynamic, yarn, llama3, …) is refused.
    let is_default = |v: &serde_json::Value| {
        let kind = v.get("rope_type").or_else(|| v.get("type"));
        kind.is_none_or(|k| k == "default")
    };
    if let Some(scaling) = hf.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        return Err(unsupported(
            "rope_scaling",
            scaling.to_string(),
            "rotary scaling is not computed",
        ));
    }
    if let Some(parameters) = hf.rope_parameters.as_ref().filter(|v| !is_default(v)) {
        return Err(unsupported(
            "rope_parameters",
            parameters.to_string(),
            "rotary scaling is not computed",
        ));
    }
    let rope_theta = hf.rope_theta.or_else(|| {
        hf.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .map(|t| t as f32)
    });
    if let Some(act) = hf.hidden_act.as_ref().filter(|a| a.as_str() != "silu") {
        return Err(unsupported(
            "hidden_act",
            act.clone(),
            "the feed-forward is SwiGLU (silu)",
        ));
    }
    for (field, on) in [
        ("attention_bias", hf.attention_bias),
        ("mlp_bias", hf.mlp_bias),
    ] {
        if on == Some(true) {
            return Err(unsupported(field, "true".into(), "the model has no biases"));
        }
    }
    let heads = hf.num_attention_heads;
    if heads == 0 {
        return Err(HfError::Config {
            path,
            message: "num_attention_heads must be positive".into(),
        });
    }
    let config = ModelConfig {
        name: dir
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned()),
        dim: hf.hidden_size,
        hidden: hf.intermediate_size,
        n_layers: hf.num_hidden_layers,
        n_heads: heads,
        n_kv_heads: hf.num_key_value_heads.unwrap_or(heads),
        head_dim: hf.head_dim.unwrap_or(hf.hidden_size / heads),
        vocab: hf.vocab_size,
        seq_len: hf
            .max_position_embeddings
            .unwrap_or(MAX_WINDOW)
            .min(MAX_WINDOW),
        norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
        rope_theta: rope_theta.unwrap_or(10_000.0),
        // transformers' Llama default.
        tied_embedding: hf.tie_word_embeddings.unwrap_or(false),
        qk_norm,
    };
    config.validate().map_err(|e| HfError::Config {
        path,
        message: e.to_string(),
    })?;
    Ok(config)
}

/// The weight files of a folder: `model.safetensors`, or the shards of its index.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(HfError::NoWeights {
            dir: dir.to_path_buf(),
        });
    }
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(&index).map_err(|source| HfError::Read {
        path: index.clone(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| HfError::Config {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let mut shards: Vec<&String> = parsed.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        // A shard is a file beside the index, never a path elsewhere.
        let name = Path::new(shard);
        if name.components().count() != 1 {
            return Err(HfError::Config {
                path: index.clone(),
                message: format!("shard `{shard}` is not a file name in the folder"),
            });
        }
        files.push(dir.join(name));
    }
    Ok(files)
}

/// The model of a Hugging Face folder: its configuration and weights (bf16, fp16 or fp32).
pub fn read_folder(dir: &Path) -> Result<Params, HfError> {
    let config = read_config(dir)?;
    Ok(read_shards(&weight_files(dir)?, Some(&config))?)
}

/// The files a folder export writes besides `config.json`, `generation_config.json` and
/// `model.safetensors`: the tokenizer's, by name; and the configuration of the folder the
/// model came from, if it came from one.
#[derive(Clone, Debug, Default)]
pub struct FolderExtras {
    pub files: Vec<(String, Vec<u8>)>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// The base folder's `config.json`: its fields the model does not decide (the context
    /// `max_position_embeddings`, token ids, `transformers_version`, ...) are kept.
    pub base_config: Option<String>,
    /// The base folder's `generation_config.json`, written as it was (sampling defaults, every
    /// EOS id).
    pub base_generation_config: Option<String>,
}

/// The files of a model folder an export writes, besides the extras.
const MODEL_FILES: [&str; 4] = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    EXPORT_MARKER,
];

/// The file that marks a folder as an anetrain export, so that exporting again may replace it
/// and a folder saved by another tool (the base model fine-tuned from) is never replaced.
pub const EXPORT_MARKER: &str = ".anetrain-export";

/// Files a desktop leaves in any folder, which a replaced export may take with it.
const DESKTOP_FILES: [&str; 2] = [".DS_Store", "Thumbs.db"];

/// An f32 as the JSON number of its shortest decimal form (1e-5, not 9.999999747378752e-6).
fn json_f32(v: f32) -> serde_json::Value {
    let shortest: f64 = v.to_string().parse().unwrap_or(v as f64);
    serde_json::json!(shortest)
}

/// `config.json` of a `LlamaForCausalLM` (or, with q/k norms, a `Qwen3ForCausalLM`) computing
/// what `config` computes, for transformers 4 (`rope_theta`) and 5 (`rope_parameters`). The
/// fields of `base` (the folder the model came from) that the model does not decide are kept,
/// among them its context, which may be longer than the training window.
pub fn config_json(
    c: &ModelConfig,
    bos: Option<u32>,
    eos: Option<u32>,
    base: Option<&serde_json::Value>,
) -> serde_json::Value {
    let (architecture, model_type) = match c.qk_norm {
        true => ("Qwen3ForCausalLM", "qwen3"),
        false => ("LlamaForCausalLM", "llama"),
    };
    let base = base.and_then(serde_json::Value::as_object);
    let kept = |key: &str| base.and_then(|b| b.get(key)).cloned();
    let context = kept("max_position_embeddings")
        .filter(|v| v.as_u64().is_some_and(|n| n >= c.seq_len as u64))
        .unwrap_or_else(|| c.seq_len.into());
    let mut ours = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": c.dim,
        "intermediate_size": c.hidden,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab,
        "max_position_embeddings": context,
        "rms_norm_eps": json_f32(c.norm_eps),
        "rope_theta": json_f32(c.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": json_f32(c.rope_theta)},
        "tie_word_embeddings": c.tied_embedding,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
        "dtype": "float32",
        "bos_token_id": kept("bos_token_id").unwrap_or(bos.into()),
        "eos_token_id": kept("eos_token_id").unwrap_or(eos.into()),
        "use_cache": true,
    });
    if let (Some(base), Some(fields)) = (base, ours.as_object_mut()) {
        for (key, value) in base {
            // Scaling was refused on import; a base's weights dtype is not the export's.
            let decided = ["rope_scaling", "torch_dtype", "dtype"].contains(&key.as_str());
            if !fields.contains_key(key) && !decided {
                fields.insert(key.clone(), value.clone());
            }
        }
    }
    ours
}

/// Writes `params` as a Hugging Face model folder `dir` (fp32 weights), with `extras` beside
/// them. The folder appears whole or not at all: it is written under a temporary name beside
/// `dir`, then renamed. A `dir` that exists is replaced only if it holds nothing but the files
/// an export writes, so that no other data is lost.
pub fn write_folder(dir: &Path, params: &Params, extras: &FolderExtras) -> Result<(), HfError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HfError::Write { path, source }
    };
    let ours: Vec<&str> = MODEL_FILES
        .into_iter()
        .chain(extras.files.iter().map(|(name, _)| name.as_str()))
        .collect();
    if dir.exists() {
        let entries = std::fs::read_dir(dir).map_err(|source| HfError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| HfError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if DESKTOP_FILES.contains(&name.as_str()) {
                continue;
            }
            if !ours.contains(&name.as_str()) || !entry.path().is_file() {
                return Err(HfError::NotAnExport {
                    dir: dir.to_path_buf(),
                    file: name,
                });
            }
            names.push(name);
        }
        if !names.is_empty() && !names.iter().any(|n| n == EXPORT_MARKER) {
            return Err(HfError::NotOurExport {
                dir: dir.to_path_buf(),
            });
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(super::atomic::TEMP_PREFIX)
        .tempdir_in(parent)
        .map_err(write_err(parent))?;
    let file = |name: &str| staging.path().join(name);
    let c = &params.layout.config;
    let pretty = |v: &serde_json::Value| {
        let mut text = serde_json::to_string_pretty(v).expect("JSON serialises");
        text.push('\n');
        text
    };
    let base = extras
        .base_config
        .as_deref()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
    let config = config_json(c, extras.bos_token_id, extras.eos_token_id, base.as_ref());
    write_atomic(&file("config.json"), pretty(&config).as_bytes())
        .map_err(write_err(&dir.join("config.json")))?;
    let generation = match &extras.base_generation_config {
        Some(text) => text.clone(),
        None => pretty(&serde_json::json!({
            "bos_token_id": extras.bos_token_id,
            "eos_token_id": extras.eos_token_id,
        })),
    };
    write_atomic(&file("generation_config.json"), generation.as_bytes())
        .map_err(write_err(&dir.join("generation_config.json")))?;
    safetensors::write(&file("model.safetensors"), params)?;
    write_atomic(
        &file(EXPORT_MARKER),
        b"written by anetrain export --format hf; exporting again replaces this folder\n",
    )
    .map_err(write_err(&dir.join(EXPORT_MARKER)))?;
    for (name, bytes) in &extras.files {
        write_atomic(&file(name), bytes).map_err(write_err(&dir.join(name)))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(write_err(staging.path()))?;
    }
    // The earlier export (checked above to hold only export files) is moved aside into a
    // temporary folder, which is removed when it drops, once the new one is in place.
    let aside = tempfile::Builder::new()
        .prefix(super::atomic::TEMP_PREFIX)
        .tempdir_in(parent)
        .map_err(write_err(parent))?;
    let earlier = aside.path().join("earlier");
    let moved = dir.exists();
    if moved {
        std::fs::rename(dir, &earlier).map_err(write_err(dir))?;
    }
    if let Err(source) = std::fs::rename(staging.path(), dir) {
        if moved && std::fs::rename(&earlier, dir).is_err() {
            // Neither in place: the earlier export stays where it was moved, and is named.
            return Err(HfError::Replace {
                dir: dir.to_path_buf(),
                kept: aside.keep().join("earlier"),
                source,
            });
        }
        return Err(HfError::Write {
            path: dir.to_path_buf(),
            source,
        });
    }
    super::atomic::sync_dir(parent);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_keeps_what_the_base_says_and_the_model_does_not_decide() {
        let c = ModelConfig {
            seq_len: 1024,
            ..ModelConfig::tiny()
        };
        let base = serde_json::json!({
            "max_position_embeddings": 8192,
            "pad_token_id": 0,
            "eos_token_id": [2, 7],
            "hidden_size": 999,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.57.0",
        });
        let out = config_json(&c, Some(1), Some(2), Some(&base));
        // Its context and token ids and extra fields are kept; the shapes and dtype are ours.
        assert_eq!(out["max_position_embeddings"], 8192);
        assert_eq!(out["pad_token_id"], 0);
        assert_eq!(out["eos_token_id"], serde_json::json!([2, 7]));
        assert_eq!(out["transformers_version"], "4.57.0");
        assert_eq!(out["hidden_size"], c.dim);
        assert_eq!(out["torch_dtype"], "float32");
        // A context shorter than the training window is not kept; without a base, the window.
        let short = serde_json::json!({"max_position_embeddings": 512});
        assert_eq!(
            config_json(&c, None, None, Some(&short))["max_position_embeddings"],
            1024
        );
        let alone = config_json(&c, Some(1), Some(2), None);
        assert_eq!(alone["max_position_embeddings"], 1024);
        assert_eq!(alone["eos_token_id"], 2);
    }
}

//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! Layout (little-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `ANETCKPT` |
//! | 4 | format version (2; version 1 files, which never hold device weights, are read too) |
//! | 8 | length H of the header |
//! | H | header: JSON ([`CheckpointHeader`]: config, options, step, sampler and RNG state, loss scale, counters) |
//! | 8 | length T of the tokenizer bytes |
//! | T | the tokenizer, as its own file format |
//! | 4·N | master weights, f32 |
//! | 4·N | AdamW first moments, f32 |
//! | 4·N | AdamW second moments, f32 |
//! | 4·N | only if the header has `device_version`: the weights the device ran on, f32 |
//! | 4 | CRC-32 of every byte before it |
//!
//! N is the parameter count of the header's config. A double-buffered run's device runs one
//! version behind the master weights; the checkpoint keeps that version too, so that the
//! resumed run's next step runs on the same weights as the uninterrupted run's would. Files are written to a temporary file,
//! synced, then renamed, so a run killed mid-write leaves the previous checkpoint intact.

use crate::run::RunSettings;
use crate::tokenizer::{Tokenizer, TokenizerError, TokenizerKind};
use crate::trainer::{Counters, TrainOptions};
use anetrain_model::io::atomic::write_atomic;
use anetrain_model::optim::{AdamState, LossScaler};
use anetrain_model::{ModelConfig, ParamLayout, Params};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

const MAGIC: &[u8; 8] = b"ANETCKPT";
const VERSION: u32 = 2;
/// The oldest format version this build reads.
const OLDEST_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Corrupt { path: String, message: String },
}

/// The small, structured part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    pub config: ModelConfig,
    /// Optimizer updates done.
    pub step: u64,
    /// The training options. An option this build does not know (one an older build had) is
    /// left out, so that older files still load.
    #[serde(deserialize_with = "known_options")]
    pub options: TrainOptions,
    /// The data sampler's state, as the run's window source keeps it.
    pub sampler: serde_json::Value,
    pub loss_scale: LossScaler,
    /// Counters carried across restarts (times, compiles, tokens).
    pub counters: Counters,
    pub tokenizer_kind: TokenizerKind,
    /// A Hugging Face tokenizer's `tokenizer_config.json` (special tokens, chat template), as
    /// JSON text, when it came with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_config: Option<String>,
    /// The Hugging Face folder the run started from (`--init DIR`), whose configuration an
    /// export keeps (its context, special token ids, sampling defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<BaseModelFiles>,
    /// The version of the weights the device ran on, when they lagged the master weights
    /// (their values follow the optimizer state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_version: Option<u64>,
    /// How the run was started (device, precision, data file, delivery settings), to resume
    /// it as it was; the trainer only carries it. None in files written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSettings>,
}

/// The configuration files of a Hugging Face folder, as JSON text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseModelFiles {
    pub config: String,
    pub generation_config: Option<String>,
}

impl BaseModelFiles {
    /// The files of the folder `dir` (None when it has no `config.json`).
    pub fn read(dir: &Path) -> Option<BaseModelFiles> {
        let config = std::fs::read_to_string(dir.join("config.json")).ok()?;
        let generation_config = std::fs::read_to_string(dir.join("generation_config.json")).ok();
        Some(BaseModelFiles {
            config,
            generation_config,
        })
    }
}

/// [`TrainOptions`] from a header, without the options this build does not know.
fn known_options<'de, D: Deserializer<'de>>(d: D) -> Result<TrainOptions, D::Error> {
    use serde::de::Error;
    let mut options = serde_json::Value::deserialize(d)?;
    let known = serde_json::to_value(TrainOptions::default()).map_err(D::Error::custom)?;
    if let (Some(options), Some(known)) = (options.as_object_mut(), known.as_object()) {
        options.retain(|key, _| known.contains_key(key));
    }
    serde_json::from_value(options).map_err(D::Error::custom)
}

/// A whole checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub header: CheckpointHeader,
    pub tokenizer: Vec<u8>,
    pub params: Params,
    pub adam: AdamState,
    /// The weights the device ran on, when they lagged the master weights (version in the
    /// header's `device_version`).
    pub device_weights: Option<Params>,
}

fn f32_bytes(out: &mut Vec<u8>, values: &[f32]) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

impl Checkpoint {
    /// The tokenizer the checkpoint embeds, with its `tokenizer_config.json`.
    pub fn tokenizer(&self) -> Result<Tokenizer, TokenizerError> {
        let source = "the checkpoint's tokenizer";
        Tokenizer::from_bytes(self.header.tokenizer_kind, &self.tokenizer, source)?
            .with_config_json(self.header.tokenizer_config.as_deref(), source)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        assert_eq!(
            self.header.device_version.is_some(),
            self.device_weights.is_some(),
            "device weights go with their version"
        );
        let header = serde_json::to_vec(&self.header).expect("the header serialises");
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.tokenizer.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.tokenizer);
        f32_bytes(&mut out, &self.params.data);
        f32_bytes(&mut out, &self.adam.m.data);
        f32_bytes(&mut out, &self.adam.v.data);
        if let Some(device) = &self.device_weights {
            f32_bytes(&mut out, &device.data);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |message: String| CheckpointError::Corrupt {
            path: path.to_string(),
            message,
        };
        if bytes.len() < 8 + 4 + 8 + 8 + 4 || &bytes[..8] != MAGIC {
            return Err(corrupt(
                "not an anetrain checkpoint (bad magic or too short)".into(),
            ));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored {
            return Err(corrupt(
                "checksum mismatch: the file is truncated or corrupted".into(),
            ));
        }
        let mut r = Reader { bytes: body, at: 8 };
        let version = u32::from_le_bytes(r.take(4).map_err(&corrupt)?.try_into().expect("4"));
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(corrupt(format!(
                "format version {version}, this build reads {OLDEST_VERSION} to {VERSION}"
            )));
        }
        let header_len = r.u64().map_err(&corrupt)? as usize;
        let header: CheckpointHeader =
            serde_json::from_slice(r.take(header_len).map_err(&corrupt)?)
                .map_err(|e| corrupt(format!("header: {e}")))?;
        header
            .config
            .validate()
            .map_err(|e| corrupt(format!("header: {e}")))?;
        let tok_len = r.u64().map_err(&corrupt)? as usize;
        let tokenizer = r.take(tok_len).map_err(&corrupt)?.to_vec();
        let layout = Arc::new(ParamLayout::new(&header.config));
        let mut read_params = |what: &str| -> Result<Params, CheckpointError> {
            let raw = r
                .take(layout.len * 4)
                .map_err(|e| corrupt(format!("{what}: {e}")))?;
            let data = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            Ok(Params {
                layout: layout.clone(),
                data,
            })
        };
        let params = read_params("weights")?;
        let m = read_params("first moments")?;
        let v = read_params("second moments")?;
        let device_weights = match header.device_version {
            Some(_) => Some(read_params("device weights")?),
            None => None,
        };
        if r.at != body.len() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the optimizer state",
                body.len() - r.at
            )));
        }
        let t = header.step;
        Ok(Checkpoint {
            header,
            tokenizer,
            params,
            adam: AdamState { m, v, t },
            device_weights,
        })
    }

    /// Writes atomically (temporary file in the same folder, fsync, rename, folder fsync), so
    /// a run killed mid-write leaves the previous checkpoint intact.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        write_atomic(path, &self.to_bytes()).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Checkpoint::from_bytes(&bytes, &path.display().to_string())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("needs {n} bytes at offset {}, the file ends first", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Checkpoint files of a run folder: `ckpt-<step>.bin`, newest last.
pub fn list_checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name
                .strip_prefix("ckpt-")?
                .strip_suffix(".bin")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Saves `ckpt-<step>.bin` in `dir` and removes all but the newest `keep`.
pub fn save_rotating(
    ckpt: &Checkpoint,
    dir: &Path,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(format!("ckpt-{:08}.bin", ckpt.header.step));
    ckpt.save(&path)?;
    let all = list_checkpoints(dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut config = ModelConfig::tiny();
        config.n_layers = 1;
        config.vocab = 16;
        let layout = Arc::new(ParamLayout::new(&config));
        let mut params = Params::zeros(layout.clone());
        params
            .data
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32 * 0.5);
        let mut adam = AdamState::new(&params);
        adam.m.data[3] = -1.0;
        adam.v.data[5] = 2.0;
        adam.t = 7;
        Checkpoint {
            header: CheckpointHeader {
                config,
                step: 7,
                options: TrainOptions {
                    lr: 0.001,
                    ..TrainOptions::default()
                },
                sampler: serde_json::json!({"state": 42}),
                loss_scale: LossScaler::new(1024.0),
                counters: Counters {
                    compiles: 3,
                    ..Counters::default()
                },
                tokenizer_kind: TokenizerKind::HuggingFace,
                tokenizer_config: None,
                base_model: None,
                device_version: None,
                run: Some(RunSettings {
                    precision: Some("fp16".into()),
                    ..RunSettings::default()
                }),
            },
            tokenizer: b"{}".to_vec(),
            params,
            adam,
            device_weights: None,
        }
    }

    #[test]
    fn device_weights_round_trip_and_version_1_files_still_read() {
        let mut c = sample();
        let mut device = c.params.clone();
        device.data[0] = 123.0;
        c.header.device_version = Some(6);
        c.device_weights = Some(device);
        let bytes = c.to_bytes();
        assert_eq!(Checkpoint::from_bytes(&bytes, "mem").unwrap(), c);
        // Cut off the device weights (and fix the checksum): the header still promises them.
        let n = c.params.data.len() * 4;
        let mut short = bytes[..bytes.len() - 4 - n].to_vec();
        short.extend_from_slice(&crc32fast::hash(&short).to_le_bytes());
        let e = Checkpoint::from_bytes(&short, "f").unwrap_err();
        assert!(e.to_string().contains("device weights"), "{e}");

        // A version 1 file: the same layout without device weights.
        let plain = sample();
        let mut v1 = plain.to_bytes();
        v1.truncate(v1.len() - 4);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&crc32fast::hash(&v1).to_le_bytes());
        assert_eq!(Checkpoint::from_bytes(&v1, "old").unwrap(), plain);
        let mut v3 = v1.clone();
        v3.truncate(v3.len() - 4);
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        v3.extend_from_slice(&crc32fast::hash(&v3).to_le_bytes());
        let e = Checkpoint::from_bytes(&v3, "new").unwrap_err();
        assert!(e.to_string().contains("format version 3"), "{e}");
    }

    /// A header as an earlier build wrote it (every field then a JSON value, an option since
    /// removed, counters of fewer kinds, no run settings) loads into the typed header.
    #[test]
    fn headers_of_earlier_builds_still_load() {
        let c = sample();
        let mut header = serde_json::to_value(&c.header).unwrap();
        header["options"]["an_option_since_removed"] = 1.into();
        header["counters"] = serde_json::json!({"compiles": 3});
        header.as_object_mut().unwrap().remove("run");
        let json = serde_json::to_vec(&header).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&json);
        let whole = c.to_bytes();
        let header_end = 8 + 4 + 8 + serde_json::to_vec(&c.header).unwrap().len();
        bytes.extend_from_slice(&whole[header_end..whole.len() - 4]);
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        let back = Checkpoint::from_bytes(&bytes, "old").unwrap();
        assert_eq!(back.header.options, c.header.options);
        assert_eq!(back.header.counters, c.header.counters);
        assert_eq!(back.header.tokenizer_kind, TokenizerKind::HuggingFace);
        assert_eq!(back.header.run, None);
        assert_eq!(back.params, c.params);
        // The tokenizer kind is stored by its short name.
        assert_eq!(header["tokenizer_kind"], "hf");
    }

    #[test]
    fn round_trips_bit_exactly() {
        let c = sample();
        let back = Checkpoint::from_bytes(&c.to_bytes(), "mem").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_truncation_and_a_flipped_bit_are_refused() {
        let bytes = sample().to_bytes();
        for cut in [0, 7, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            let e = Checkpoint::from_bytes(&bytes[..cut], "f").unwrap_err();
            assert!(matches!(e, CheckpointError::Corrupt { .. }), "cut {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        let e = Checkpoint::from_bytes(&flipped, "f").unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn rotation_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sample();
        for step in [1, 2, 3, 4] {
            c.header.step = step;
            save_rotating(&c, dir.path(), 2).unwrap();
        }
        let steps: Vec<u64> = list_checkpoints(dir.path())
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(steps, vec![3, 4]);
        let last = Checkpoint::load(&list_checkpoints(dir.path())[1].1).unwrap();
        assert_eq!(last.header.step, 4);
    }
}

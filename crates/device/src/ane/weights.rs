//! The contents of the weights dictionary handed to the compiler (spec 1.4), as plain data:
//! one entry per BLOBFILE path the program uses, `{"data": <the whole file>, "offset": 0}`,
//! the inner dictionary's keys in the order of [`INNER_KEYS`].

use crate::DeviceError;
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::Program;
use std::path::{Component, Path};

/// Every BLOBFILE path starts with this; the rest is the file's place in the model directory.
pub const MODEL_PATH_PREFIX: &str = "@model_path/";

/// One entry of the dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightEntry<'a> {
    /// The BLOBFILE path, exactly as the MIL text writes it: `@model_path/weights/wq.bin`.
    pub key: &'a str,
    /// The entry's `offset` number. Generated code always passes 0; what it means is unknown
    /// (spec section 11).
    pub offset: u64,
    /// The whole blob file, from its 64-byte header on.
    pub data: &'a [u8],
    /// Where the file goes inside the model's temp directory: the key without `@model_path/`.
    pub relative_path: &'a str,
}

/// A key of an entry's inner dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerKey {
    Data,
    Offset,
}

impl InnerKey {
    /// The key as the framework reads it.
    pub fn name(self) -> &'static str {
        match self {
            InnerKey::Data => "data",
            InnerKey::Offset => "offset",
        }
    }
}

/// The inner dictionary's keys in the order they are inserted. The framework takes the inner
/// dictionary's first value and calls `bytes` on it: were `offset` (a number) first, that
/// would raise an Objective-C exception, which aborts a Rust process (ane-constraints
/// section 3; maderix/ANE and the decompiled framework).
pub const INNER_KEYS: [InnerKey; 2] = [InnerKey::Data, InnerKey::Offset];

/// A value of an entry's inner dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerValue<'a> {
    /// Becomes an NSData.
    Data(&'a [u8]),
    /// Becomes an NSNumber.
    Offset(u64),
}

impl<'a> WeightEntry<'a> {
    /// The inner dictionary's keys and values, in [`INNER_KEYS`] order.
    pub fn inner(&self) -> [(InnerKey, InnerValue<'a>); 2] {
        INNER_KEYS.map(|key| {
            let value = match key {
                InnerKey::Data => InnerValue::Data(self.data),
                InnerKey::Offset => InnerValue::Offset(self.offset),
            };
            (key, value)
        })
    }
}

/// The dictionary, in key order. Empty for a program without weights: the compiler then gets
/// `@{}`, never nil (nil makes compiles fail silently, spec 1.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightsDictionary<'a> {
    pub entries: Vec<WeightEntry<'a>>,
}

impl<'a> WeightsDictionary<'a> {
    /// The entries for the files `program` refers to. Files it does not use are left out, so
    /// that a kernel's identity (the compiler hashes the weights) depends on what it uses only.
    pub fn for_program(
        program: &'a Program,
        files: &'a WeightFiles,
    ) -> Result<WeightsDictionary<'a>, DeviceError> {
        let mut entries = Vec::new();
        for key in program.blob_paths() {
            let data = files
                .get(key)
                .ok_or_else(|| DeviceError::MissingWeights(key.to_string()))?;
            entries.push(WeightEntry {
                key,
                offset: 0,
                data,
                relative_path: relative_path(key)?,
            });
        }
        entries.sort_by_key(|e| e.key);
        Ok(WeightsDictionary { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `weights/wq.bin` for `@model_path/weights/wq.bin`, refusing paths that would write outside
/// the model's directory.
pub fn relative_path(key: &str) -> Result<&str, DeviceError> {
    let refuse = |why: &str| DeviceError::CompileFailed(format!("weight file path `{key}`: {why}"));
    let rest = key
        .strip_prefix(MODEL_PATH_PREFIX)
        .ok_or_else(|| refuse("BLOBFILE paths on the ANE must start with @model_path/"))?;
    let stays_inside = !rest.is_empty()
        && !rest.contains('\0')
        && !rest.ends_with('/')
        && Path::new(rest)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !stays_inside {
        return Err(refuse(
            "must name a file inside the model directory (no `..`, `.`, `//` or absolute parts)",
        ));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_mil::blob::BlobFile;
    use anetrain_mil::examples;

    #[test]
    fn entries_hold_whole_files_at_offset_zero_for_the_paths_used() {
        let program = examples::conv_chain(2, 64, 32);
        let mut files = examples::conv_chain_weights(2, 64, 1.0);
        files.insert_blob("@model_path/weights/unused.bin", &BlobFile::fp16(&[1.0]));
        let dict = WeightsDictionary::for_program(&program, &files).unwrap();
        let keys: Vec<&str> = dict.entries.iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            ["@model_path/weights/w0.bin", "@model_path/weights/w1.bin"]
        );
        for e in &dict.entries {
            assert_eq!(e.offset, 0);
            assert_eq!(
                e.data,
                files.get(e.key).unwrap(),
                "the whole file, header included"
            );
            assert_eq!(e.data.len(), 128 + 64 * 64 * 2);
            assert_eq!(format!("{MODEL_PATH_PREFIX}{}", e.relative_path), e.key);
        }
    }

    #[test]
    fn the_inner_dictionary_puts_the_data_first() {
        assert_eq!(INNER_KEYS.map(InnerKey::name), ["data", "offset"]);
        let entry = WeightEntry {
            key: "@model_path/weights/wq.bin",
            offset: 0,
            data: b"blob bytes",
            relative_path: "weights/wq.bin",
        };
        assert_eq!(
            entry.inner(),
            [
                (InnerKey::Data, InnerValue::Data(b"blob bytes")),
                (InnerKey::Offset, InnerValue::Offset(0)),
            ]
        );
    }

    #[test]
    fn a_program_without_weights_gets_an_empty_dictionary() {
        let program = examples::dynamic_matmul(64, 64, 32);
        let files = WeightFiles::new();
        let dict = WeightsDictionary::for_program(&program, &files).unwrap();
        assert!(dict.is_empty());
    }

    #[test]
    fn a_missing_file_is_named() {
        let program = examples::final_rmsnorm(64, 32);
        match WeightsDictionary::for_program(&program, &WeightFiles::new()) {
            Err(DeviceError::MissingWeights(path)) => {
                assert_eq!(path, "@model_path/weights/rms_w.bin")
            }
            other => panic!("expected MissingWeights, got {other:?}"),
        }
    }

    #[test]
    fn paths_must_stay_inside_the_model_directory() {
        assert_eq!(
            relative_path("@model_path/weights/wq.bin").unwrap(),
            "weights/wq.bin"
        );
        assert_eq!(relative_path("@model_path/w.bin").unwrap(), "w.bin");
        for bad in [
            "weights/wq.bin",
            "/tmp/wq.bin",
            "@model_path/",
            "@model_path/../escape.bin",
            "@model_path/weights/../../escape.bin",
            "@model_path//etc/passwd",
            "@model_path/./w.bin",
            "@model_path/weights/",
            "@model_path/a\0b",
        ] {
            let err = relative_path(bad).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}

//! Tokenizers: Hugging Face `tokenizer.json` (loaded, or a byte-level BPE trained here) and
//! llama2.c `tokenizer.bin`, behind one enum.
//!
//! Both kinds put `<unk>`, BOS and EOS at ids 0, 1, 2 when they follow llama2.c's conventions (the
//! BPE trained here does); `bos_id`/`eos_id` say what a given tokenizer has. `encode` never adds
//! BOS or EOS; `decode` leaves them out.

pub mod hf;
pub mod hf_config;
pub mod llama2c;

pub use hf::HfTokenizer;
pub use hf_config::TokenizerConfig;
pub use llama2c::Llama2cTokenizer;

use anetrain_model::io::atomic::write_atomic;
use anetrain_model::ModelConfig;
use std::path::Path;
use std::sync::OnceLock;
use thiserror::Error;

/// Tokens that close a turn in common chat formats: ChatML (Qwen, SmolLM2), Llama 3, Gemma,
/// Phi-3.
pub const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"];

/// Vocabulary size of the `tiny` model's tokenizer.
pub const DEFAULT_VOCAB: usize = 1024;

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write tokenizer {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: corrupt llama2.c tokenizer at byte {offset}: {message}")]
    Corrupt {
        file: String,
        offset: u64,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: {message}")]
    HuggingFace { file: String, message: String },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    IdOutOfRange { id: u32, vocab: usize },
    #[error("BPE training: {0}")]
    Training(String),
}

/// Which file format a tokenizer comes from; checkpoints store it as `hf` or `llama2c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TokenizerKind {
    /// Hugging Face `tokenizer.json`.
    #[serde(rename = "hf")]
    HuggingFace,
    /// llama2.c `tokenizer.bin`.
    #[serde(rename = "llama2c")]
    Llama2c,
}

/// A tokenizer of either kind.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    HuggingFace(HfTokenizer),
    Llama2c(Llama2cTokenizer),
}

impl Tokenizer {
    /// Loads a tokenizer file: `.json` is Hugging Face, `.bin` is llama2.c, any other name is
    /// recognised by its content (JSON starts with `{`). A `tokenizer.json` comes with the
    /// `tokenizer_config.json` and `chat_template.jinja` beside it, if there are any.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let tokenizer = Tokenizer::load_file(path)?;
        let folder = path
            .parent()
            .filter(|_| path.file_name() == Some("tokenizer.json".as_ref()));
        match (tokenizer, folder) {
            (Tokenizer::HuggingFace(t), Some(dir)) => match TokenizerConfig::read_folder(dir)? {
                Some(config) => {
                    let source = dir.join(hf_config::CONFIG_FILE).display().to_string();
                    Ok(Tokenizer::HuggingFace(t.with_config(config, &source)?))
                }
                None => Ok(Tokenizer::HuggingFace(t)),
            },
            (tokenizer, _) => Ok(tokenizer),
        }
    }

    fn load_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Read {
            path: name.clone(),
            source,
        })?;
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => TokenizerKind::HuggingFace,
            Some("bin") => TokenizerKind::Llama2c,
            _ => sniff_kind(&bytes),
        };
        Tokenizer::from_bytes(kind, &bytes, &name)
    }

    /// Parses a tokenizer of a known kind from its file bytes; `source` names it in errors.
    pub fn from_bytes(
        kind: TokenizerKind,
        bytes: &[u8],
        source: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        Ok(match kind {
            TokenizerKind::HuggingFace => {
                Tokenizer::HuggingFace(HfTokenizer::from_bytes(bytes, source)?)
            }
            TokenizerKind::Llama2c => {
                Tokenizer::Llama2c(Llama2cTokenizer::from_bytes(bytes, source)?)
            }
        })
    }

    /// This tokenizer with a `tokenizer_config.json` kept as JSON text (a checkpoint keeps one
    /// so); only a Hugging Face tokenizer has one.
    pub fn with_config_json(
        self,
        json: Option<&str>,
        source: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        match (self, json) {
            (Tokenizer::HuggingFace(t), Some(json)) => {
                let config = TokenizerConfig::parse(json, source)?;
                Ok(Tokenizer::HuggingFace(t.with_config(config, source)?))
            }
            (Tokenizer::Llama2c(_), Some(_)) => Err(TokenizerError::Invalid {
                file: source.to_string(),
                message: "a llama2.c tokenizer has no tokenizer_config.json".into(),
            }),
            (tokenizer, None) => Ok(tokenizer),
        }
    }

    /// The `tokenizer_config.json` a Hugging Face tokenizer came with.
    pub fn config(&self) -> Option<&TokenizerConfig> {
        match self {
            Tokenizer::HuggingFace(t) => t.config(),
            Tokenizer::Llama2c(_) => None,
        }
    }

    /// The bytes of the tokenizer's file (`tokenizer.json` text or `tokenizer.bin`), for saving
    /// or embedding in a checkpoint.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TokenizerError> {
        match self {
            Tokenizer::HuggingFace(t) => Ok(t.to_json()?.into_bytes()),
            Tokenizer::Llama2c(t) => Ok(t.to_bytes()),
        }
    }

    /// Writes the tokenizer's file atomically: a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes).map_err(|source| TokenizerError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        match self {
            Tokenizer::HuggingFace(_) => TokenizerKind::HuggingFace,
            Tokenizer::Llama2c(_) => TokenizerKind::Llama2c,
        }
    }

    /// Token ids of `text`, without BOS or EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match self {
            Tokenizer::HuggingFace(t) => t.encode(text),
            Tokenizer::Llama2c(t) => Ok(t.encode_with(text, false, false)),
        }
    }

    /// Whether a text starts with BOS, as the tokenizer's own tools encode it: what
    /// `tokenizer_config.json`'s `add_bos_token` says, else whether the `tokenizer.json`
    /// post-processor puts it in front (Llama's does, GPT-2-style ones as SmolLM2's and Qwen's
    /// do not). A llama2.c tokenizer always does, as `run.c` does.
    pub fn adds_bos(&self) -> bool {
        match self {
            Tokenizer::Llama2c(t) => t.bos_id().is_some(),
            Tokenizer::HuggingFace(t) => t.adds_bos(),
        }
    }

    /// The tokens that end a turn: EOS, and the end-of-turn markers of the common chat formats
    /// that the vocabulary has (a base model's EOS, `<|endoftext|>`, is not the `<|im_end|>`
    /// its template closes turns with).
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos_id().into_iter().collect();
        if let Tokenizer::HuggingFace(t) = self {
            for marker in END_OF_TURN {
                if let Some(id) = t.inner().token_to_id(marker).filter(|id| !ids.contains(id)) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// The text of a special token (`<s>`, `<|im_end|>`) as a template writes it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        match self {
            Tokenizer::HuggingFace(t) => t.inner().id_to_token(id),
            Tokenizer::Llama2c(t) => t
                .piece(id)
                .map(|p| String::from_utf8_lossy(p).trim().to_string()),
        }
    }

    /// The text of `ids`; BOS and EOS are left out; an id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        match self {
            Tokenizer::HuggingFace(t) => t.decode(ids),
            Tokenizer::Llama2c(t) => t.decode(ids),
        }
    }

    /// Number of ids the model must embed (the largest id + 1).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::HuggingFace(t) => t.vocab_size(),
            Tokenizer::Llama2c(t) => t.vocab_size(),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::HuggingFace(t) => t.bos_id(),
            Tokenizer::Llama2c(t) => t.bos_id(),
        }
    }

    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::HuggingFace(t) => t.eos_id(),
            Tokenizer::Llama2c(t) => t.eos_id(),
        }
    }
}

/// JSON (after optional whitespace) starts with `{`; a llama2.c file starts with a small
/// little-endian integer.
fn sniff_kind(bytes: &[u8]) -> TokenizerKind {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => TokenizerKind::HuggingFace,
        _ => TokenizerKind::Llama2c,
    }
}

/// Why `tokenizer` cannot serve `config`, if it cannot: it has ids past the model's
/// vocabulary, or it is a llama2.c `tokenizer.bin`, which holds one record per id of its model
/// and so must be exactly as large (a file cut on a record boundary loads, shorter).
pub fn mismatch(tokenizer: &Tokenizer, config: &ModelConfig) -> Option<String> {
    let (n, vocab) = (tokenizer.vocab_size(), config.vocab);
    if n > vocab {
        return Some(format!(
            "the tokenizer has {n} tokens but model `{}` has a vocabulary of {vocab}",
            config.name
        ));
    }
    if tokenizer.kind() == TokenizerKind::Llama2c && n < vocab {
        return Some(format!(
            "the llama2.c tokenizer has {n} tokens but model `{}` has a vocabulary of {vocab}: \
             a tokenizer.bin holds one record per id of its model, so this one is cut short or \
             belongs to another model",
            config.name
        ));
    }
    None
}

/// Trains the project's byte-level BPE (see [`hf`]) on `corpus` to `vocab_size` tokens.
pub fn train_bpe(corpus: &str, vocab_size: usize) -> Result<Tokenizer, TokenizerError> {
    HfTokenizer::train_bpe(corpus, vocab_size).map(Tokenizer::HuggingFace)
}

/// The `tiny` model's tokenizer: the byte-level BPE of [`DEFAULT_VOCAB`] tokens trained on the
/// embedded corpus. Training it is quick enough in a release build (docs/benchmarks.md) that it
/// is trained on first use and kept for the life of the process rather than shipped as a file
/// that could drift from the code.
pub fn default_tokenizer() -> Result<Tokenizer, TokenizerError> {
    static DEFAULT: OnceLock<Tokenizer> = OnceLock::new();
    if let Some(t) = DEFAULT.get() {
        return Ok(t.clone());
    }
    let trained = train_bpe(crate::embedded_corpus(), DEFAULT_VOCAB)?;
    Ok(DEFAULT.get_or_init(|| trained).clone())
}

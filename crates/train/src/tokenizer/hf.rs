//! Hugging Face `tokenizer.json`: loading any of them, and training the project's byte-level BPE.
//!
//! The BPE we train is GPT-2's scheme: text is split by GPT-2's regular expression, each piece
//! is turned into bytes (shown as 256 printable characters), and merges are learned over those
//! bytes, so every string encodes without an unknown token and decodes back exactly. There is no
//! normalizer. Ids 0, 1, 2 are the special tokens `<unk>`, `<s>` (BOS) and `</s>` (EOS), as in
//! llama2.c vocabularies, then the 256 byte tokens, then one token per merge in the order
//! learned.
//!
//! As in every Hugging Face tokenizer, a special token's text appearing literally in the input
//! (`<s>`, say) encodes as that special token.

use super::hf_config::TokenizerConfig;
use super::TokenizerError;
use anetrain_model::ModelConfig;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

/// Token ids and the byte range of the text each comes from.
pub type TokenSpans = (Vec<u32>, Vec<std::ops::Range<usize>>);

/// The special tokens of the BPE we train, at ids 0, 1, 2.
pub const BPE_SPECIAL_TOKENS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// The smallest vocabulary `train_bpe` accepts: the special tokens and the 256 bytes.
pub const BPE_MIN_VOCAB: usize = BPE_SPECIAL_TOKENS.len() + 256;

/// Names that loaded tokenizers commonly give their BOS and EOS tokens, in the order tried.
const BOS_NAMES: [&str; 4] = ["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
const EOS_NAMES: [&str; 4] = ["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"];

/// Texts are encoded in chunks of about this many bytes, so that memory stays bounded (the
/// library keeps about 100 bytes of bookkeeping per token while it encodes) and chunks encode
/// in parallel.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks encoded together before their bookkeeping is dropped.
const CHUNKS_PER_BATCH: usize = 16;

/// A Hugging Face tokenizer with the facts the trainer needs.
#[derive(Clone)]
pub struct HfTokenizer {
    /// Boxed: the library's tokenizer is about 1.5 kB, and `Tokenizer` values get moved.
    inner: Box<tokenizers::Tokenizer>,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Whether encoding chunk by chunk gives exactly the tokens of encoding the whole text.
    chunkable: bool,
    /// The folder's `tokenizer_config.json`, when it came with one.
    config: Option<Box<TokenizerConfig>>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn hf_error(source: &str, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::HuggingFace {
        file: source.to_string(),
        message: e.to_string(),
    }
}

impl HfTokenizer {
    /// Parses a `tokenizer.json`; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<HfTokenizer, TokenizerError> {
        // The tokenizers crate panics on some damaged files (its decoder reader `expect`s a
        // well-formed stream): the syntax is checked first, for an error with its line and
        // column, and a panic that still escapes the crate becomes an error.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| {
            TokenizerError::Invalid {
                file: source.to_string(),
                message: format!("not JSON: {e}"),
            }
        })?;
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| TokenizerError::Invalid {
                file: source.to_string(),
                message: "the tokenizers crate could not read it (it panicked)".into(),
            })?;
        let inner = parsed.map_err(|e| hf_error(source, e))?;
        Self::wrap(inner, source)
    }

    fn wrap(inner: tokenizers::Tokenizer, source: &str) -> Result<HfTokenizer, TokenizerError> {
        // Added tokens may sit above the model's vocabulary: the embedding needs max id + 1 rows.
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&id| id as usize + 1);
        if vocab_size == 0 {
            return Err(TokenizerError::Invalid {
                file: source.to_string(),
                message: "the vocabulary is empty".into(),
            });
        }
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = find(&BOS_NAMES);
        let eos = find(&EOS_NAMES);
        let chunkable = is_chunkable(&inner);
        Ok(HfTokenizer {
            inner: Box::new(inner),
            vocab_size,
            bos,
            eos,
            chunkable,
            config: None,
        })
    }

    /// This tokenizer with its folder's configuration: the BOS and EOS it names replace the
    /// ones guessed from the vocabulary (a token it names must be in the vocabulary; `source`
    /// names the configuration in errors).
    pub fn with_config(
        mut self,
        config: TokenizerConfig,
        source: &str,
    ) -> Result<HfTokenizer, TokenizerError> {
        let id = |token: &Option<String>, key: &str| -> Result<Option<u32>, TokenizerError> {
            match token {
                None => Ok(None),
                Some(t) => {
                    self.inner
                        .token_to_id(t)
                        .map(Some)
                        .ok_or_else(|| TokenizerError::Invalid {
                            file: source.to_string(),
                            message: format!("{key} `{t}` is not in the tokenizer's vocabulary"),
                        })
                }
            }
        };
        let bos = id(&config.bos_token, "bos_token")?;
        let eos = id(&config.eos_token, "eos_token")?;
        // `"bos_token": null` (Qwen's) says there is none; a missing key leaves the guess.
        if config.has_field("bos_token") {
            self.bos = bos;
        }
        if config.has_field("eos_token") {
            self.eos = eos;
        }
        self.config = Some(Box::new(config));
        Ok(self)
    }

    /// See [`super::Tokenizer::adds_bos`].
    pub fn adds_bos(&self) -> bool {
        let Some(bos) = self.bos else {
            return false;
        };
        if let Some(add) = self.config().and_then(|c| c.add_bos_token) {
            return add;
        }
        self.inner
            .encode_fast("a", true)
            .is_ok_and(|e| e.get_ids().first() == Some(&bos))
    }

    /// The folder's `tokenizer_config.json`, if the tokenizer came with one.
    pub fn config(&self) -> Option<&TokenizerConfig> {
        self.config.as_deref()
    }

    /// Trains the project's byte-level BPE (see the module doc) on `corpus` to exactly
    /// `vocab_size` tokens. Deterministic: the same corpus and size give the same tokenizer, byte
    /// for byte once serialized (merge ties go to the smaller pair of ids, and ids follow the
    /// order of the merges).
    pub fn train_bpe(corpus: &str, vocab_size: usize) -> Result<HfTokenizer, TokenizerError> {
        const SOURCE: &str = "BPE training";
        if vocab_size < BPE_MIN_VOCAB {
            return Err(TokenizerError::Training(format!(
                "a vocabulary of {vocab_size} is smaller than the {BPE_MIN_VOCAB} base tokens \
                 ({} special + 256 bytes)",
                BPE_SPECIAL_TOKENS.len()
            )));
        }
        // Each merge joins two adjacent symbols of the corpus into one, so a corpus of n bytes
        // teaches at most n merges; a larger request would only size the trainer's tables.
        let most = BPE_MIN_VOCAB
            .saturating_add(corpus.len())
            .min(ModelConfig::MAX_VOCAB);
        if vocab_size > most {
            return Err(TokenizerError::Training(format!(
                "a vocabulary of {vocab_size} is more than {most}, the most {}",
                if most == ModelConfig::MAX_VOCAB {
                    "a model may have".to_string()
                } else {
                    format!(
                        "a corpus of {} bytes can teach (one token per merge)",
                        corpus.len()
                    )
                }
            )));
        }
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(gpt2_byte_level()));
        inner.with_decoder(Some(gpt2_byte_level()));
        let specials = BPE_SPECIAL_TOKENS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // The trainer counts pre-tokenized pieces per sequence; safe chunks give the same pieces
        // as the whole text, so the counts and the merges are those of the whole corpus.
        let chunks = safe_chunks(corpus, CHUNK_BYTES);
        inner
            .train(&mut trainer, chunks.into_iter())
            .map_err(|e| hf_error(SOURCE, e))?;
        let trained = Self::wrap(inner, SOURCE)?;
        if trained.vocab_size != vocab_size {
            return Err(TokenizerError::Training(format!(
                "the corpus ({} bytes) supports only {} tokens, {vocab_size} were asked for",
                corpus.len(),
                trained.vocab_size
            )));
        }
        Ok(trained)
    }

    /// The `tokenizer.json` text (pretty-printed, as the library writes it).
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(true)
            .map_err(|e| hf_error("tokenizer.json", e))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The library's tokenizer, for anything this wrapper does not cover.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, without BOS/EOS. Long texts are encoded in parallel chunks when that
    /// provably gives the same tokens (see `safe_chunks`), else in one piece.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if !self.chunkable || text.len() <= CHUNK_BYTES {
            return self.encode_whole(text);
        }
        let chunks = safe_chunks(text, CHUNK_BYTES);
        let mut ids = Vec::with_capacity(text.len() / 2);
        for batch in chunks.chunks(CHUNKS_PER_BATCH) {
            let encodings = self
                .inner
                .encode_batch_fast(batch.to_vec(), false)
                .map_err(|e| hf_error("encode", e))?;
            for e in &encodings {
                ids.extend_from_slice(e.get_ids());
            }
        }
        Ok(ids)
    }

    /// Encodes `text` in one call to the library: the reference that chunked encoding must
    /// match; slower, and its memory grows with the text.
    pub fn encode_whole(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| hf_error("encode", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` (in one piece), with the bytes of `text` each comes from.
    pub fn encode_with_spans(&self, text: &str) -> Result<TokenSpans, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| hf_error("encode", e))?;
        let spans = encoding.get_offsets().iter().map(|&(a, b)| a..b).collect();
        Ok((encoding.get_ids().to_vec(), spans))
    }

    /// The text of `ids`, special tokens (BOS, EOS, `<unk>`) left out. An id the vocabulary does
    /// not have is an error rather than silently skipped, as the library would.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::IdOutOfRange {
                id,
                vocab: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| hf_error("decode", e))
    }
}

/// GPT-2's byte-level step: split by its regular expression, no space added in front.
fn gpt2_byte_level() -> ByteLevel {
    ByteLevel::new(false, false, true)
}

/// Whether `safe_chunks` boundaries preserve this tokenizer's output: true for exactly the
/// GPT-2 byte-level pre-tokenizer without a prefix space and without a normalizer, and added
/// tokens that neither span a line break nor look at their neighbours (lstrip, rstrip,
/// single_word). Anything else is encoded in one piece.
fn is_chunkable(t: &tokenizers::Tokenizer) -> bool {
    let byte_level = matches!(
        t.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space
    );
    let plain_added = t
        .get_added_tokens_decoder()
        .values()
        .all(|a| !a.lstrip && !a.rstrip && !a.single_word && !a.content.contains('\n'));
    byte_level && t.get_normalizer().is_none() && plain_added
}

/// Splits `text` into chunks of at least `target` bytes (the last may be shorter) at line
/// starts where GPT-2's regular expression is known to split anyway: just after a `\n` that
/// follows a non-whitespace character and precedes one. There, no piece of the expression
/// (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`) can span the
/// boundary, the `\n` is a piece of its own whether the text goes on or ends there, and the
/// expression has no look-behind; so the pieces, and hence the tokens, are those of the whole
/// text.
pub fn safe_chunks(text: &str, target: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while text.len() - start > target {
        match next_safe_boundary(text, start + target) {
            Some(end) => {
                chunks.push(&text[start..end]);
                start = end;
            }
            None => break,
        }
    }
    if start < text.len() || chunks.is_empty() {
        chunks.push(&text[start..]);
    }
    chunks
}

/// The first safe boundary (see `safe_chunks`) at or after byte `from`.
fn next_safe_boundary(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut search = from;
    loop {
        // 0x0A never occurs inside a multi-byte UTF-8 sequence, so a byte search is exact and
        // lands on a character boundary.
        let newline = search + bytes.get(search..)?.iter().position(|&b| b == b'\n')?;
        let after = newline + 1;
        let next = text[after..].chars().next()?;
        let before = text[..newline].chars().next_back();
        if before.is_some_and(|c| !c.is_whitespace()) && !next.is_whitespace() {
            return Some(after);
        }
        search = after;
    }
}

//! Token files: llama2.c's headerless uint16 format, and a uint32 variant with a header.
//!
//! # uint16 (llama2.c / TinyStories `*.bin`)
//!
//! The token ids as raw little-endian `u16`, one after another, no header: the token count is
//! the file length / 2. Used whenever every id fits, i.e. for vocabularies of up to 65,536
//! tokens.
//!
//! # uint32 (anetrain, for larger vocabularies)
//!
//! A 24-byte header, then the ids as little-endian `u32`:
//!
//! | bytes  | field     | value                                              |
//! |--------|-----------|----------------------------------------------------|
//! | 0..8   | magic     | ASCII `ANETOKEN`                                   |
//! | 8..12  | version   | `u32` 1                                            |
//! | 12..16 | dtype     | `u32` 4: bytes per token id, i.e. uint32           |
//! | 16..24 | n_tokens  | `u64` number of ids that follow                    |
//! | 24..   | ids       | `n_tokens` × `u32`                                 |
//!
//! The file is exactly `24 + 4 · n_tokens` bytes; anything else is reported as truncated or
//! corrupt. The ids start at a multiple of 4, so the file can be memory-mapped as `u32`s.
//!
//! A reader that needs 32-bit ids (vocabulary over 65,536) refuses a file without the header;
//! a reader with a smaller vocabulary accepts either format, and tells them apart by the magic.
//! (A headerless uint16 file whose first four ids happen to spell `ANETOKEN` — 20033, 21573,
//! 19279, 20037 — would be misread; no tokenizer of that size puts those four in a row.)
//!
//! Files are read whole into memory, at their on-disk width (2 or 4 bytes a token), rather than
//! memory-mapped: a mapped file that another process truncates kills the reader with SIGBUS,
//! and the files this project trains on fit in memory.

use super::DataError;
use anetrain_model::io::atomic::write_atomic;
use std::path::Path;

/// The magic bytes that open a uint32 token file.
pub const MAGIC: [u8; 8] = *b"ANETOKEN";
/// The header version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of the uint32 format's header in bytes.
pub const HEADER_BYTES: usize = 24;
/// The `dtype` field of a uint32 file: bytes per id.
const DTYPE_U32: u32 = 4;

/// The element type of a token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFormat {
    /// Headerless little-endian uint16 (llama2.c).
    U16,
    /// `ANETOKEN` header, then little-endian uint32.
    U32,
}

impl TokenFormat {
    /// The narrowest format that holds every id of a vocabulary: uint16 while all ids are at
    /// most 65,535.
    pub fn for_vocab(vocab: usize) -> TokenFormat {
        if vocab <= 1 << 16 {
            TokenFormat::U16
        } else {
            TokenFormat::U32
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenFormat::U16 => "uint16",
            TokenFormat::U32 => "uint32",
        }
    }
}

/// Token ids in memory, at the width of the file they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenIds {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl TokenIds {
    /// Ids from a tokenizer, stored at the width `vocab` needs; `source` names them in errors.
    /// Every id must be inside the vocabulary.
    pub fn from_ids(ids: &[u32], vocab: usize, source: &str) -> Result<TokenIds, DataError> {
        check_ids(ids.iter().copied(), vocab, source)?;
        Ok(match TokenFormat::for_vocab(vocab) {
            // Every id is below vocab <= 65,536 here, so the narrowing is exact.
            TokenFormat::U16 => TokenIds::U16(ids.iter().map(|&id| id as u16).collect()),
            TokenFormat::U32 => TokenIds::U32(ids.to_vec()),
        })
    }

    pub fn format(&self) -> TokenFormat {
        match self {
            TokenIds::U16(_) => TokenFormat::U16,
            TokenIds::U32(_) => TokenFormat::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TokenIds::U16(v) => v.len(),
            TokenIds::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<u32> {
        match self {
            TokenIds::U16(v) => v.get(index).map(|&t| u32::from(t)),
            TokenIds::U32(v) => v.get(index).copied(),
        }
    }

    /// Copies `out.len()` ids starting at `start` into `out`; None if they run past the end.
    pub fn copy_to(&self, start: usize, out: &mut [u32]) -> Option<()> {
        let end = start.checked_add(out.len())?;
        match self {
            TokenIds::U16(v) => {
                for (o, &t) in out.iter_mut().zip(v.get(start..end)?) {
                    *o = u32::from(t);
                }
            }
            TokenIds::U32(v) => out.copy_from_slice(v.get(start..end)?),
        }
        Some(())
    }

    /// All ids, widened to u32.
    pub fn iter(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            TokenIds::U16(v) => Box::new(v.iter().map(|&t| u32::from(t))),
            TokenIds::U32(v) => Box::new(v.iter().copied()),
        }
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// Checks that every id is below `vocab`, naming `source` and the first id that is not.
    pub fn check_vocab(&self, vocab: usize, source: &str) -> Result<(), DataError> {
        check_ids(self.iter(), vocab, source)
    }
}

/// Checks that every id is below `vocab`, naming the first that is not.
fn check_ids(ids: impl Iterator<Item = u32>, vocab: usize, source: &str) -> Result<(), DataError> {
    match ids.enumerate().find(|&(_, id)| id as usize >= vocab) {
        Some((index, value)) => Err(DataError::TokenOutOfRange {
            path: source.to_string(),
            index: index as u64,
            value,
            vocab,
        }),
        None => Ok(()),
    }
}

/// The bytes of a token file holding `tokens`, in the format their width implies.
pub fn encode_token_file(tokens: &TokenIds) -> Vec<u8> {
    match tokens {
        TokenIds::U16(v) => v.iter().flat_map(|t| t.to_le_bytes()).collect(),
        TokenIds::U32(v) => {
            let mut out = Vec::with_capacity(HEADER_BYTES + 4 * v.len());
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(&DTYPE_U32.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend(v.iter().flat_map(|t| t.to_le_bytes()));
            out
        }
    }
}

/// Writes `ids` as a token file for a model of `vocab` tokens, uint16 or uint32 as the
/// vocabulary needs, atomically (nothing is written if an id is out of range or the write
/// fails). Returns the format written.
pub fn write_token_file(path: &Path, ids: &[u32], vocab: usize) -> Result<TokenFormat, DataError> {
    let name = path.display().to_string();
    let tokens = TokenIds::from_ids(ids, vocab, &name)?;
    write_atomic(path, &encode_token_file(&tokens))
        .map_err(|source| DataError::Write { path: name, source })?;
    Ok(tokens.format())
}

/// Reads a token file for a model of `vocab` tokens: the format is recognised by its header, a
/// vocabulary over 65,536 requires the uint32 format, and every id must be below `vocab`.
pub fn read_token_file(path: &Path, vocab: usize) -> Result<TokenIds, DataError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: name.clone(),
        source,
    })?;
    decode_token_file(&bytes, vocab, &name)
}

/// Parses the bytes of a token file (see [`read_token_file`]); `source` names it in errors.
pub fn decode_token_file(bytes: &[u8], vocab: usize, source: &str) -> Result<TokenIds, DataError> {
    let tokens = if bytes.starts_with(&MAGIC) {
        decode_u32(bytes, source)?
    } else if TokenFormat::for_vocab(vocab) == TokenFormat::U32 {
        return Err(DataError::MissingHeader {
            path: source.to_string(),
            vocab,
            found: describe_start(bytes),
        });
    } else {
        decode_u16(bytes, source)?
    };
    tokens.check_vocab(vocab, source)?;
    Ok(tokens)
}

fn decode_u16(bytes: &[u8], source: &str) -> Result<TokenIds, DataError> {
    if bytes.len() % 2 != 0 {
        return Err(DataError::Truncated {
            path: source.to_string(),
            len: bytes.len() as u64,
            width: 2,
            at: bytes.len() as u64 - 1,
        });
    }
    Ok(TokenIds::U16(
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect(),
    ))
}

fn decode_u32(bytes: &[u8], source: &str) -> Result<TokenIds, DataError> {
    let wrong = |field: &'static str, found: String, expected: String| DataError::WrongHeader {
        path: source.to_string(),
        field,
        found,
        expected,
    };
    if bytes.len() < HEADER_BYTES {
        return Err(DataError::TruncatedHeader {
            path: source.to_string(),
            len: bytes.len() as u64,
        });
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = u32_at(8);
    if version != VERSION {
        return Err(wrong("version", version.to_string(), VERSION.to_string()));
    }
    let dtype = u32_at(12);
    if dtype != DTYPE_U32 {
        return Err(wrong(
            "dtype",
            dtype.to_string(),
            format!("{DTYPE_U32} (uint32)"),
        ));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[16..24]);
    let declared = u64::from_le_bytes(count);
    let body = &bytes[HEADER_BYTES..];
    if body.len() % 4 != 0 {
        return Err(DataError::Truncated {
            path: source.to_string(),
            len: bytes.len() as u64,
            width: 4,
            at: (bytes.len() - body.len() % 4) as u64,
        });
    }
    let found = (body.len() / 4) as u64;
    if found < declared {
        return Err(DataError::ShorterThanHeader {
            path: source.to_string(),
            declared,
            found,
            len: bytes.len() as u64,
        });
    }
    if found > declared {
        return Err(DataError::LongerThanHeader {
            path: source.to_string(),
            declared,
            extra: (found - declared) * 4,
        });
    }
    Ok(TokenIds::U32(
        body.chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

/// The first bytes of a file, for an error message.
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".into();
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("first bytes {}", head.join(" "))
}

//! llama2.c's `tokenizer.bin`: reading, writing, and encoding/decoding exactly as `run.c` does.
//!
//! # File format
//!
//! All integers and floats little-endian, no padding:
//!
//! ```text
//! u32 max_token_length              (llama2.c declares it as int; the longest piece in bytes)
//! repeated until end of file, once per token, in id order:
//!     f32 score                     (merge priority: the higher, the earlier the merge)
//!     i32 len                       (bytes of the piece, 0 <= len <= max_token_length)
//!     u8  piece[len]                (raw bytes, usually UTF-8, no terminating NUL)
//! ```
//!
//! The vocabulary size is not stored: llama2.c takes it from the model file, we read records to
//! the end of the file. A token's id is its position in the file.
//!
//! # Conventions
//!
//! - Ids 0, 1, 2 are `<unk>`, BOS and EOS (llama2.c hard-codes BOS = 1 and EOS = 2; generation
//!   starts from `[1]`).
//! - Pieces of the form `<0xHH>` are byte tokens: they stand for the single byte 0xHH. Encoding
//!   falls back to them for a character that has no piece of its own (llama2.c computes that id
//!   as byte + 3; we look the piece up, which gives the same id in llama2.c's vocabularies and
//!   stays right in any other order). A vocabulary without byte tokens encodes such a character
//!   as `<unk>` (id 0).
//! - The space marker is a plain space: llama2.c's exporter replaced SentencePiece's `▁` by ` `.

use super::TokenizerError;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// Id of `<unk>` in llama2.c vocabularies.
pub const UNK_ID: u32 = 0;
/// Id of the beginning-of-sequence token in llama2.c vocabularies.
pub const BOS_ID: u32 = 1;
/// Id of the end-of-sequence token in llama2.c vocabularies.
pub const EOS_ID: u32 = 2;

/// llama2.c starts its best-merge search from this score, so a piece scored at or below it is
/// never merged into. Kept for identical results.
const MIN_MERGE_SCORE: f32 = -1e10;

/// A llama2.c tokenizer: pieces with their scores, plus the lookups encoding needs.
#[derive(Clone, Debug)]
pub struct Llama2cTokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    max_token_length: u32,
    /// Piece bytes → the lowest id with that piece (llama2.c's binary search may find any of
    /// several equal pieces; real vocabularies have none).
    lookup: HashMap<Vec<u8>, u32>,
    /// The id of the `<0xHH>` piece for each byte, if the vocabulary has it.
    byte_ids: Box<[Option<u32>; 256]>,
}

impl PartialEq for Llama2cTokenizer {
    /// Equal files: the lookups are derived from these fields.
    fn eq(&self, other: &Self) -> bool {
        self.max_token_length == other.max_token_length
            && self.pieces == other.pieces
            && self.scores.len() == other.scores.len()
            && self
                .scores
                .iter()
                .zip(&other.scores)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Llama2cTokenizer {
    /// A tokenizer from `(piece, score)` pairs in id order; `max_token_length` is the longest
    /// piece, as llama2.c's exporter writes it.
    pub fn new(tokens: Vec<(Vec<u8>, f32)>) -> Result<Llama2cTokenizer, TokenizerError> {
        let max = tokens.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let max = u32::try_from(max)
            .ok()
            .filter(|&m| m <= i32::MAX as u32)
            .ok_or_else(|| TokenizerError::Invalid {
                file: "llama2.c tokenizer".into(),
                message: format!("a piece of {max} bytes is too long for the file format"),
            })?;
        let (pieces, scores) = tokens.into_iter().unzip();
        Self::from_parts(pieces, scores, max, "llama2.c tokenizer")
    }

    fn from_parts(
        pieces: Vec<Vec<u8>>,
        scores: Vec<f32>,
        max_token_length: u32,
        source: &str,
    ) -> Result<Llama2cTokenizer, TokenizerError> {
        if pieces.is_empty() {
            return Err(TokenizerError::Invalid {
                file: source.into(),
                message: "the vocabulary is empty".into(),
            });
        }
        if u32::try_from(pieces.len()).is_err() {
            return Err(TokenizerError::Invalid {
                file: source.into(),
                message: format!("{} tokens do not fit 32-bit ids", pieces.len()),
            });
        }
        let mut lookup = HashMap::with_capacity(pieces.len());
        for (id, piece) in pieces.iter().enumerate() {
            lookup.entry(piece.clone()).or_insert(id as u32);
        }
        let mut byte_ids = Box::new([None; 256]);
        for (byte, slot) in byte_ids.iter_mut().enumerate() {
            *slot = lookup.get(byte_piece(byte as u8).as_bytes()).copied();
        }
        Ok(Llama2cTokenizer {
            pieces,
            scores,
            max_token_length,
            lookup,
            byte_ids,
        })
    }

    /// Parses a `tokenizer.bin`; `source` names the file in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Llama2cTokenizer, TokenizerError> {
        let corrupt = |offset: usize, message: String| TokenizerError::Corrupt {
            file: source.to_string(),
            offset: offset as u64,
            message,
        };
        let mut reader = ByteReader { bytes, pos: 0 };
        let max_token_length = reader.u32().ok_or_else(|| {
            corrupt(
                0,
                format!(
                    "{} bytes, too short for the 4-byte max_token_length header",
                    bytes.len()
                ),
            )
        })?;
        let mut pieces = Vec::new();
        let mut scores = Vec::new();
        while reader.pos < bytes.len() {
            let id = pieces.len();
            let start = reader.pos;
            let truncated = |what: &str| {
                corrupt(
                    start,
                    format!("token {id}: record truncated in its {what} (file ends)"),
                )
            };
            let score = f32::from_bits(reader.u32().ok_or_else(|| truncated("score"))?);
            let len = reader.u32().ok_or_else(|| truncated("length"))? as i32;
            if len < 0 {
                return Err(corrupt(start, format!("token {id}: negative length {len}")));
            }
            if len as u32 > max_token_length {
                return Err(corrupt(
                    start,
                    format!("token {id}: length {len} exceeds max_token_length {max_token_length}"),
                ));
            }
            let piece = reader
                .take(len as usize)
                .ok_or_else(|| truncated("piece bytes"))?;
            pieces.push(piece.to_vec());
            scores.push(score);
        }
        Self::from_parts(pieces, scores, max_token_length, source)
    }

    /// The file's bytes; `from_bytes(to_bytes())` gives back identical pieces and scores.
    pub fn to_bytes(&self) -> Vec<u8> {
        let total: usize = self.pieces.iter().map(|p| 8 + p.len()).sum();
        let mut out = Vec::with_capacity(4 + total);
        out.extend_from_slice(&self.max_token_length.to_le_bytes());
        for (piece, score) in self.pieces.iter().zip(&self.scores) {
            out.extend_from_slice(&score.to_bits().to_le_bytes());
            // from_parts guarantees every piece is at most max_token_length <= i32::MAX bytes.
            out.extend_from_slice(&(piece.len() as i32).to_le_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn max_token_length(&self) -> u32 {
        self.max_token_length
    }

    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// BOS, when the vocabulary is large enough to follow llama2.c's fixed ids.
    pub fn bos_id(&self) -> Option<u32> {
        (self.pieces.len() > BOS_ID as usize).then_some(BOS_ID)
    }

    pub fn eos_id(&self) -> Option<u32> {
        (self.pieces.len() > EOS_ID as usize).then_some(EOS_ID)
    }

    /// llama2.c's `encode`: optional BOS, a dummy-prefix space before non-empty text (as
    /// SentencePiece's `add_dummy_prefix`), one token per character (or its byte tokens), then
    /// repeatedly the adjacent pair whose concatenated piece has the highest score is merged,
    /// the leftmost on a tie, until no pair forms a piece; optional EOS.
    pub fn encode_with(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.extend(self.bos_id());
        }
        let mut initial = Vec::with_capacity(text.len() + 1);
        if !text.is_empty() {
            self.push_char(' ', &mut initial);
        }
        for c in text.chars() {
            self.push_char(c, &mut initial);
        }
        tokens.extend(self.merge(initial));
        if eos {
            tokens.extend(self.eos_id());
        }
        tokens
    }

    /// The token of one character, or its byte tokens if the vocabulary has no such piece.
    fn push_char(&self, c: char, out: &mut Vec<u32>) {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        match self.lookup.get(bytes) {
            Some(&id) => out.push(id),
            None => out.extend(
                bytes
                    .iter()
                    .map(|&b| self.byte_ids[b as usize].unwrap_or(UNK_ID)),
            ),
        }
    }

    /// The id of the piece `left ++ right`, and its score, if it is a merge candidate.
    fn merged(&self, left: u32, right: u32, buf: &mut Vec<u8>) -> Option<(u32, f32)> {
        buf.clear();
        buf.extend_from_slice(&self.pieces[left as usize]);
        buf.extend_from_slice(&self.pieces[right as usize]);
        let id = *self.lookup.get(buf.as_slice())?;
        let score = self.scores[id as usize];
        // `score > MIN_MERGE_SCORE` is false for NaN, as in llama2.c's comparison.
        (score > MIN_MERGE_SCORE).then_some((id, score))
    }

    /// llama2.c's merge loop, in O(n log n) instead of its O(n²) per merge: a heap of candidate
    /// pairs ordered by (score, leftmost position) over a linked list of tokens, entries checked
    /// for staleness when popped. Same result, since the list keeps the tokens' order and the
    /// heap's top is the pair llama2.c's scan would pick.
    fn merge(&self, mut tokens: Vec<u32>) -> Vec<u32> {
        let n = tokens.len();
        // Neighbours by original position; `usize::MAX` for none. A merged-away node is never
        // anyone's neighbour again.
        let mut next: Vec<usize> = (1..=n)
            .map(|i| if i == n { usize::MAX } else { i })
            .collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut heap = BinaryHeap::new();
        let mut buf = Vec::new();
        let candidate = |left: usize, tokens: &[u32], next: &[usize], buf: &mut Vec<u8>| {
            let right = next[left];
            if right == usize::MAX {
                return None;
            }
            let (id, score) = self.merged(tokens[left], tokens[right], buf)?;
            Some(Candidate {
                // +0.0 turns -0.0 into 0.0: C's `>` sees them as equal, and so must the order.
                score: Score(score + 0.0),
                left: Reverse(left),
                right,
                left_token: tokens[left],
                right_token: tokens[right],
                merged: id,
            })
        };
        for i in 0..n {
            heap.extend(candidate(i, &tokens, &next, &mut buf));
        }
        while let Some(c) = heap.pop() {
            let left = c.left.0;
            let stale = next[left] != c.right
                || tokens[left] != c.left_token
                || tokens[c.right] != c.right_token;
            if stale {
                continue;
            }
            tokens[left] = c.merged;
            let after = next[c.right];
            next[left] = after;
            if after != usize::MAX {
                prev[after] = left;
            }
            next[c.right] = usize::MAX;
            if prev[left] != usize::MAX {
                heap.extend(candidate(prev[left], &tokens, &next, &mut buf));
            }
            heap.extend(candidate(left, &tokens, &next, &mut buf));
        }
        let mut out = Vec::with_capacity(n);
        let mut i = if n == 0 { usize::MAX } else { 0 };
        while i != usize::MAX {
            out.push(tokens[i]);
            i = next[i];
        }
        out
    }

    /// llama2.c's `decode` of one token for streaming: the piece's bytes, a byte token as its
    /// byte, and the leading space of a piece right after BOS dropped.
    pub fn decode_piece(&self, prev: Option<u32>, token: u32) -> Result<Vec<u8>, TokenizerError> {
        let piece = self.checked_piece(token)?;
        if let Some(byte) = parse_byte_piece(piece) {
            return Ok(vec![byte]);
        }
        let strip = prev == Some(BOS_ID) && self.bos_id().is_some() && piece.first() == Some(&b' ');
        Ok(piece[usize::from(strip)..].to_vec())
    }

    /// Decodes a whole sequence: BOS and EOS are dropped, byte tokens become their bytes, and
    /// the dummy-prefix space that encoding added is removed from the start of the text and
    /// after each BOS (SentencePiece's rule; llama2.c applies it after BOS only, since its
    /// sequences always start with BOS). Invalid UTF-8 is replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut at_start = true;
        for &id in ids {
            let piece = self.checked_piece(id)?;
            if Some(id) == self.bos_id() {
                at_start = true;
                continue;
            }
            if Some(id) == self.eos_id() {
                continue;
            }
            let start = bytes.len();
            match parse_byte_piece(piece) {
                Some(byte) => bytes.push(byte),
                None => bytes.extend_from_slice(piece),
            }
            if at_start && bytes.get(start) == Some(&b' ') {
                bytes.remove(start);
            }
            at_start = false;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn checked_piece(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.piece(id).ok_or(TokenizerError::IdOutOfRange {
            id,
            vocab: self.vocab_size(),
        })
    }
}

/// The piece of a byte token, as llama2.c's vocabularies spell it.
pub fn byte_piece(byte: u8) -> String {
    format!("<0x{byte:02X}>")
}

/// `<0xHH>` → the byte 0xHH (either hex case); anything else → None.
fn parse_byte_piece(piece: &[u8]) -> Option<u8> {
    let hex = piece.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// A merge candidate in the heap; the greatest is the one llama2.c would pick.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    score: Score,
    left: Reverse<usize>,
    right: usize,
    left_token: u32,
    right_token: u32,
    merged: u32,
}

/// A total order on finite scores (NaN never becomes a candidate).
struct Score(f32);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Little-endian reads that report running out of bytes instead of panicking.
struct ByteReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len())?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Some(slice)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

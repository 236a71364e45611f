//! llama2.c `tokenizer.bin`: the file round trips, encoding follows `run.c` (checked by hand on
//! a small vocabulary, and against a literal port of its O(n²) loop on random text), decoding
//! inverts it, and corrupt files are refused.

use anetrain_train::tokenizer::llama2c::{byte_piece, Llama2cTokenizer, BOS_ID, EOS_ID};
use anetrain_train::tokenizer::{Tokenizer, TokenizerError};
use std::collections::HashMap;

/// A llama2.c-shaped vocabulary: `<unk>`, BOS, EOS, the 256 byte tokens (ids 3..=258), then
/// the pieces given, in order (first id 259).
fn vocab(pieces: &[(&str, f32)]) -> Vec<(Vec<u8>, f32)> {
    let mut v: Vec<(Vec<u8>, f32)> = vec![
        (b"<unk>".to_vec(), 0.0),
        (b"\n<s>\n".to_vec(), 0.0),
        (b"\n</s>\n".to_vec(), 0.0),
    ];
    v.extend((0..=255u8).map(|b| (byte_piece(b).into_bytes(), 0.0)));
    v.extend(pieces.iter().map(|(p, s)| (p.as_bytes().to_vec(), *s)));
    v
}

const SPACE: u32 = 259;
const A: u32 = 260;
const B: u32 = 261;
const C: u32 = 262;
const AB: u32 = 263;
const BC: u32 = 264;
const SPACE_A: u32 = 265;
const ABC: u32 = 266;
const E_ACUTE: u32 = 267;
const AA: u32 = 268;

fn small() -> Llama2cTokenizer {
    Llama2cTokenizer::new(vocab(&[
        (" ", -1000.0),
        ("a", -1000.0),
        ("b", -1000.0),
        ("c", -1000.0),
        ("ab", 1.0),
        ("bc", 2.0),
        (" a", 0.5),
        ("abc", 3.0),
        ("é", -1000.0),
        ("aa", 1.0),
    ]))
    .unwrap()
}

/// The byte token of `b` in this vocabulary, as llama2.c computes it.
fn byte(b: u8) -> u32 {
    b as u32 + 3
}

#[test]
fn encoding_follows_llama2c_by_hand() {
    let t = small();
    // " abc" (dummy prefix): pairs " a" 0.5, "ab" 1, "bc" 2 → "bc" first; then "abc" 3 beats
    // " a" 0.5; " abc" is no piece.
    assert_eq!(t.encode_with("abc", false, false), [SPACE, ABC]);
    // " ab": "ab" 1 beats " a" 0.5.
    assert_eq!(t.encode_with("ab", false, false), [SPACE, AB]);
    // " a" only.
    assert_eq!(t.encode_with("a", true, true), [BOS_ID, SPACE_A, EOS_ID]);
    // " aaa": the two "aa" pairs tie at 1; the leftmost wins, " a" (0.5) loses.
    assert_eq!(t.encode_with("aaa", false, false), [SPACE, AA, A]);
    // "é" has a piece; "ü" (C3 BC) falls back to its bytes; "c" stays alone after " ".
    assert_eq!(t.encode_with("é", false, false), [SPACE, E_ACUTE]);
    assert_eq!(
        t.encode_with("üc", false, false),
        [SPACE, byte(0xC3), byte(0xBC), C]
    );
    // No dummy prefix for empty text.
    assert_eq!(t.encode_with("", true, false), [BOS_ID]);
    assert_eq!(t.encode_with("", false, false), Vec::<u32>::new());
    // "b" then "c": "bc" merges across what were two characters.
    assert_eq!(t.encode_with("bcb", false, false), [SPACE, BC, B]);
}

#[test]
fn decoding_inverts_encoding_and_strips_the_dummy_prefix() {
    let t = small();
    assert_eq!(t.decode(&[BOS_ID, SPACE_A, EOS_ID]).unwrap(), "a");
    assert_eq!(t.decode(&[SPACE, byte(0xC3), byte(0xBC), C]).unwrap(), "üc");
    assert_eq!(t.decode(&[A, SPACE_A]).unwrap(), "a a");
    // After each BOS the dummy prefix goes again.
    assert_eq!(
        t.decode(&[BOS_ID, SPACE_A, EOS_ID, BOS_ID, SPACE, ABC])
            .unwrap(),
        "aabc"
    );
    for text in ["abc", " a b  c ", "üéa\nbc", "aaaa", "", "x y z"] {
        let ids = t.encode_with(text, false, false);
        assert_eq!(t.decode(&ids).unwrap(), text, "{ids:?}");
    }
    // Streaming, as run.c prints: the space after BOS dropped, byte tokens as bytes.
    assert_eq!(t.decode_piece(Some(BOS_ID), SPACE_A).unwrap(), b"a");
    assert_eq!(t.decode_piece(Some(A), SPACE_A).unwrap(), b" a");
    assert_eq!(t.decode_piece(None, byte(b'A')).unwrap(), b"A");
    assert!(matches!(
        t.decode(&[A, 5000]),
        Err(TokenizerError::IdOutOfRange {
            id: 5000,
            vocab: 269
        })
    ));
}

#[test]
fn the_file_round_trips_pieces_and_scores() {
    let t = small();
    let bytes = t.to_bytes();
    // Header, then the first record: score 0.0, length 5, "<unk>".
    assert_eq!(
        &bytes[..4],
        &6u32.to_le_bytes(),
        "max_token_length is the longest piece"
    );
    assert_eq!(&bytes[4..17], b"\0\0\0\0\x05\0\0\0<unk>");
    let back = Llama2cTokenizer::from_bytes(&bytes, "t.bin").unwrap();
    assert_eq!(back, t);
    assert_eq!(back.to_bytes(), bytes);
    for id in 0..t.vocab_size() as u32 {
        assert_eq!(back.piece(id), t.piece(id));
        assert_eq!(
            back.score(id).unwrap().to_bits(),
            t.score(id).unwrap().to_bits()
        );
    }
    // Through a file and the generic loader.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.bin");
    Tokenizer::Llama2c(t.clone()).save(&path).unwrap();
    let loaded = Tokenizer::load(&path).unwrap();
    assert_eq!(loaded.vocab_size(), 269);
    assert_eq!((loaded.bos_id(), loaded.eos_id()), (Some(1), Some(2)));
    assert_eq!(loaded.encode("abc").unwrap(), [SPACE, ABC]);
    match loaded {
        Tokenizer::Llama2c(l) => assert_eq!(l, t),
        other => panic!("loaded as {:?}", other.kind()),
    }
}

#[test]
fn corrupt_files_are_refused_with_the_position() {
    let good = small().to_bytes();
    let err = |bytes: &[u8]| {
        Llama2cTokenizer::from_bytes(bytes, "t.bin")
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(&good[..3]),
        "t.bin: corrupt llama2.c tokenizer at byte 0: 3 bytes, too short for the 4-byte \
         max_token_length header"
    );
    assert_eq!(err(&good[..4]), "t.bin: the vocabulary is empty");
    // Cut inside token 1's piece: token 0 is 4 + 4 + 5 bytes from byte 4.
    assert_eq!(
        err(&good[..17 + 9]),
        "t.bin: corrupt llama2.c tokenizer at byte 17: token 1: record truncated in its piece \
         bytes (file ends)"
    );
    assert_eq!(
        err(&good[..17 + 2]),
        "t.bin: corrupt llama2.c tokenizer at byte 17: token 1: record truncated in its score \
         (file ends)"
    );
    let mut negative = good.clone();
    negative[8..12].copy_from_slice(&(-5i32).to_le_bytes());
    assert_eq!(
        err(&negative),
        "t.bin: corrupt llama2.c tokenizer at byte 4: token 0: negative length -5"
    );
    let mut long = good.clone();
    long[..4].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(
        err(&long),
        "t.bin: corrupt llama2.c tokenizer at byte 4: token 0: length 5 exceeds \
         max_token_length 4"
    );
}

/// llama2.c's `encode`, transcribed loop for loop (string lookups, an O(n²) scan per merge,
/// `score > best` with best starting at -1e10, byte fallback at byte + 3).
fn reference_encode(pieces: &[(Vec<u8>, f32)], text: &str) -> Vec<u32> {
    let mut lookup: HashMap<&[u8], u32> = HashMap::new();
    for (id, (p, _)) in pieces.iter().enumerate() {
        lookup.entry(p.as_slice()).or_insert(id as u32);
    }
    let mut tokens: Vec<u32> = Vec::new();
    if !text.is_empty() {
        tokens.push(lookup[&b" "[..]]);
    }
    for c in text.chars() {
        let mut buf = [0; 4];
        let s = c.encode_utf8(&mut buf).as_bytes();
        match lookup.get(s) {
            Some(&id) => tokens.push(id),
            None => tokens.extend(s.iter().map(|&b| b as u32 + 3)),
        }
    }
    loop {
        let mut best_score = -1e10f32;
        let mut best: Option<(usize, u32)> = None;
        for i in 0..tokens.len().saturating_sub(1) {
            let mut s = pieces[tokens[i] as usize].0.clone();
            s.extend_from_slice(&pieces[tokens[i + 1] as usize].0);
            if let Some(&id) = lookup.get(s.as_slice()) {
                if pieces[id as usize].1 > best_score {
                    best_score = pieces[id as usize].1;
                    best = Some((i, id));
                }
            }
        }
        let Some((i, id)) = best else { break };
        tokens[i] = id;
        tokens.remove(i + 1);
    }
    tokens
}

/// A deterministic xorshift for test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn the_fast_merge_loop_agrees_with_llama2c_on_random_text() {
    let chars = ['a', 'b', 'c', ' ', 'é', 'ü', '\n'];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..40 {
        // Random multi-character pieces with few distinct scores, so ties are common.
        let mut extra: Vec<(String, f32)> = vec![(" ".into(), -1e9), ("a".into(), -1e9)];
        extra.push(("b".into(), -1e9));
        for _ in 0..60 {
            let len = 2 + rng.below(4);
            let piece: String = (0..len).map(|_| chars[rng.below(chars.len())]).collect();
            let score = rng.below(5) as f32 - 2.0;
            extra.push((piece, score));
        }
        let refs: Vec<(&str, f32)> = extra.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        let pieces = vocab(&refs);
        let t = Llama2cTokenizer::new(pieces.clone()).unwrap();
        for _ in 0..20 {
            let len = rng.below(40);
            let text: String = (0..len).map(|_| chars[rng.below(chars.len())]).collect();
            let want = reference_encode(&pieces, &text);
            assert_eq!(
                t.encode_with(&text, false, false),
                want,
                "round {round}, text {text:?}"
            );
            assert_eq!(t.decode(&want).unwrap(), text);
        }
    }
}

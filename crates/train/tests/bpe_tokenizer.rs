//! The byte-level BPE trained on the embedded corpus: deterministic, exact round trips, chunked
//! encoding identical to whole-text encoding, and loadable from the tokenizer.json it writes.

use anetrain_model::config::ModelConfig;
use anetrain_train::embedded_corpus;
use anetrain_train::tokenizer::hf::{safe_chunks, HfTokenizer, BPE_MIN_VOCAB};
use anetrain_train::tokenizer::{
    default_tokenizer, train_bpe, Tokenizer, TokenizerError, DEFAULT_VOCAB,
};

fn trained_1024() -> HfTokenizer {
    match default_tokenizer().unwrap() {
        Tokenizer::HuggingFace(t) => t,
        other => panic!("the default tokenizer is {:?}", other.kind()),
    }
}

const SAMPLES: [&str; 6] = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, \
     must be in want of a wife.",
    "Café déjà vu — “naïve” façade, Œuvre, Ærø; 東京 and Ελλάδα, emoji 🦀🎉, zero\u{200b}width.",
    "  leading and trailing spaces  \n\n\n\ttabs\r\nCRLF lines\r\n",
    "numbers 1234567890 3.14159 -42 1e-5 and punctuation ?!;:'\"()[]{}<>@#$%^&*",
    "",
    "\u{0}\u{1}\u{7f} control characters and \u{fffd} replacement",
];

#[test]
fn the_default_tokenizer_has_1024_tokens_with_llama_style_specials() {
    let t = trained_1024();
    assert_eq!(t.vocab_size(), 1024);
    assert_eq!(DEFAULT_VOCAB, ModelConfig::tiny().vocab);
    let inner = t.inner();
    assert_eq!(inner.token_to_id("<unk>"), Some(0));
    assert_eq!(inner.token_to_id("<s>"), Some(1));
    assert_eq!(inner.token_to_id("</s>"), Some(2));
    assert_eq!((t.bos_id(), t.eos_id()), (Some(1), Some(2)));
    // Frequent English pieces were learned (Ġ is GPT-2's printable form of a space byte).
    for piece in ["Ġthe", "Ġand", "Ġof"] {
        assert!(inner.token_to_id(piece).is_some(), "{piece} is not a token");
    }
    // English compresses to well under half a token per byte (1024 tokens: ~2.7 bytes/token).
    let ids = t.encode(SAMPLES[0]).unwrap();
    assert!(ids.len() * 2 < SAMPLES[0].len(), "{} tokens", ids.len());
}

#[test]
fn decode_inverts_encode_on_corpus_samples_and_non_ascii_text() {
    let t = trained_1024();
    let corpus = embedded_corpus();
    let mut samples: Vec<&str> = SAMPLES.to_vec();
    // Slices of the corpus from several places, cut at character boundaries.
    for k in 0..8 {
        let mut start = corpus.len() / 8 * k;
        while !corpus.is_char_boundary(start) {
            start += 1;
        }
        let mut end = (start + 5000).min(corpus.len());
        while !corpus.is_char_boundary(end) {
            end -= 1;
        }
        samples.push(&corpus[start..end]);
    }
    for s in samples {
        let ids = t.encode(s).unwrap();
        assert!(ids.iter().all(|&id| id < 1024));
        assert_eq!(t.decode(&ids).unwrap(), s);
        // BOS and EOS around a sequence decode to nothing.
        let framed = [&[1][..], &ids, &[2]].concat();
        assert_eq!(t.decode(&framed).unwrap(), s);
    }
}

#[test]
fn training_is_deterministic() {
    // Each training run uses hash maps with fresh random seeds, so agreement is not luck.
    let corpus = &embedded_corpus()[..600_000];
    let a = train_bpe(corpus, 700).unwrap().to_bytes().unwrap();
    let b = train_bpe(corpus, 700).unwrap().to_bytes().unwrap();
    assert!(a == b, "two trainings on the same corpus differ");
    let c = train_bpe(corpus, 701).unwrap().to_bytes().unwrap();
    assert!(a != c);
    // And the full default run agrees with the cached default tokenizer.
    let fresh = train_bpe(embedded_corpus(), 1024)
        .unwrap()
        .to_bytes()
        .unwrap();
    assert!(fresh == Tokenizer::HuggingFace(trained_1024()).to_bytes().unwrap());
}

#[test]
fn chunked_encoding_equals_encoding_the_whole_corpus() {
    let t = trained_1024();
    let corpus = embedded_corpus();
    let chunked = t.encode(corpus).unwrap();
    let whole = t.encode_whole(corpus).unwrap();
    assert_eq!(chunked.len(), whole.len());
    assert!(chunked == whole);
    assert!(chunked.len() > 1_000_000);
}

#[test]
fn safe_chunks_cut_only_between_non_space_lines() {
    let text = "one\ntwo \nthree\n\nfour\nfive";
    // Candidates after "one\n" (o|t: yes), "two \n" (space before: no), "three\n" (newline
    // after: no), "\n" (newline before: no), "four\n" (yes).
    assert_eq!(
        safe_chunks(text, 1),
        ["one\n", "two \nthree\n\nfour\n", "five"]
    );
    assert_eq!(safe_chunks(text, 100), [text]);
    assert_eq!(safe_chunks("", 1), [""]);
    for target in [1, 7, 64, 4096] {
        let corpus = &embedded_corpus()[..200_000];
        assert_eq!(safe_chunks(corpus, target).concat(), corpus);
    }
}

#[test]
fn the_saved_tokenizer_json_loads_back_identically() {
    let t = Tokenizer::HuggingFace(trained_1024());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    t.save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left");
    let loaded = Tokenizer::load(&path).unwrap();
    assert_eq!(loaded.vocab_size(), 1024);
    assert_eq!((loaded.bos_id(), loaded.eos_id()), (Some(1), Some(2)));
    assert_eq!(loaded.to_bytes().unwrap(), t.to_bytes().unwrap());
    for s in SAMPLES {
        assert_eq!(loaded.encode(s).unwrap(), t.encode(s).unwrap());
    }
}

#[test]
fn bad_requests_and_files_are_errors() {
    let err = train_bpe("some text", 100).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "BPE training: a vocabulary of 100 is smaller than the {BPE_MIN_VOCAB} base tokens \
             (3 special + 256 bytes)"
        )
    );
    let err = train_bpe("tiny corpus, tiny corpus", 280)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("BPE training: the corpus (24 bytes) supports only"),
        "{err}"
    );
    // Sizes no corpus or model can have are refused before the trainer sizes anything.
    let err = train_bpe("tiny corpus, tiny corpus", 4_294_967_295)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "BPE training: a vocabulary of 4294967295 is more than {}, the most a corpus of 24 \
             bytes can teach (one token per merge)",
            BPE_MIN_VOCAB + 24
        )
    );
    let big = "a".repeat(1 << 25);
    let err = train_bpe(&big, usize::MAX).unwrap_err().to_string();
    assert!(
        err.ends_with(&format!(
            "is more than {}, the most a model may have",
            1 << 24
        )),
        "{err}"
    );
    let t = trained_1024();
    assert!(matches!(
        t.decode(&[5, 1024]),
        Err(TokenizerError::IdOutOfRange {
            id: 1024,
            vocab: 1024
        })
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{\"model\": ").unwrap();
    let err = Tokenizer::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
    let err = Tokenizer::load(&dir.path().join("absent.json"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read tokenizer"), "{err}");
}

/// A `tokenizer.json` written by someone else (here by hand, in the Hugging Face format: a
/// byte-pair model with its vocabulary and merges, no normalizer, no special tokens) loads,
/// and encodes by its merges.
#[test]
fn a_third_party_tokenizer_json_loads_and_encodes_by_its_merges() {
    let json = r#"{
      "version": "1.0",
      "truncation": null,
      "padding": null,
      "added_tokens": [],
      "normalizer": null,
      "pre_tokenizer": null,
      "post_processor": null,
      "decoder": null,
      "model": {
        "type": "BPE",
        "dropout": null,
        "unk_token": "<unk>",
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": false,
        "byte_fallback": false,
        "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5},
        "merges": ["a b", "ab c"]
      }
    }"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let t = Tokenizer::load(&path).unwrap();
    assert_eq!(t.vocab_size(), 6);
    assert_eq!(t.bos_id(), None);
    assert_eq!(t.encode("abcab").unwrap(), [5, 4]);
    assert_eq!(t.encode("cba").unwrap(), [3, 2, 1]);
}

/// A `tokenizer.json` comes with the `tokenizer_config.json` beside it: the special tokens it
/// names replace the guessed ones (`null` means none), and one the vocabulary lacks is an error
/// naming the file.
#[test]
fn the_folder_configuration_names_the_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    Tokenizer::HuggingFace(trained_1024()).save(&path).unwrap();
    let guessed = Tokenizer::load(&path).unwrap();
    assert_eq!((guessed.bos_id(), guessed.eos_id()), (Some(1), Some(2)));
    assert!(guessed.config().is_none());
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, r#"{"bos_token": null, "eos_token": "<unk>"}"#).unwrap();
    let named = Tokenizer::load(&path).unwrap();
    assert_eq!((named.bos_id(), named.eos_id()), (None, Some(0)));
    assert_eq!(named.config().unwrap().eos_token.as_deref(), Some("<unk>"));
    // A tokenizer file of another name is taken alone.
    let other = dir.path().join("other.json");
    std::fs::copy(&path, &other).unwrap();
    assert_eq!(Tokenizer::load(&other).unwrap().bos_id(), Some(1));
    std::fs::write(&config, r#"{"eos_token": "<|im_end|>"}"#).unwrap();
    let err = Tokenizer::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(
            "tokenizer_config.json: eos_token `<|im_end|>` is not in the tokenizer's vocabulary"
        ),
        "{err}"
    );
}

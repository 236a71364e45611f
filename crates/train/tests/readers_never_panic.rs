//! Every reader of the training crate fed damaged input: a checkpoint (with its CRC made to
//! agree, since the CRC is no security boundary), a token file, both tokenizer formats, and a
//! model configuration. Each must give an error or a value, never panic, hang or allocate by
//! what the input claims; and what loads must work (a tokenizer encodes and decodes).

use anetrain_device::NumericMode;
use anetrain_model::init::init_params;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::checkpoint::Checkpoint;
use anetrain_train::data::token_file::{decode_token_file, encode_token_file, TokenIds};
use anetrain_train::tokenizer::{train_bpe, Llama2cTokenizer, Tokenizer, TokenizerKind};
use anetrain_train::trainer::{TrainOptions, TrainState};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};

/// A model small enough that each case is quick.
fn small() -> ModelConfig {
    ModelConfig {
        name: "fuzz".into(),
        dim: 16,
        hidden: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: 8,
        vocab: 300,
        seq_len: 8,
        ..ModelConfig::tiny()
    }
}

fn checkpoint() -> &'static Checkpoint {
    static CKPT: OnceLock<Checkpoint> = OnceLock::new();
    CKPT.get_or_init(|| {
        let options = TrainOptions::default();
        let params = init_params(Arc::new(ParamLayout::new(&small())), 1);
        let state = TrainState::new(params, &options, NumericMode::Fp32);
        state.checkpoint(
            &options,
            serde_json::json!({ "rng": "1" }),
            TokenizerKind::Llama2c,
            llama2c().to_bytes(),
        )
    })
}

/// 300 records: the three specials, the 256 byte tokens, 41 more pieces.
fn llama2c() -> &'static Llama2cTokenizer {
    static TOK: OnceLock<Llama2cTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let mut pieces: Vec<(Vec<u8>, f32)> = ["<unk>", "\n<s>\n", "\n</s>\n"]
            .iter()
            .map(|p| (p.as_bytes().to_vec(), 0.0))
            .collect();
        pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>").into_bytes(), 0.0)));
        for (i, p) in ["e", "t", " t", "th", "the", " the", "an", "and", " and"]
            .iter()
            .cycle()
            .take(41)
            .enumerate()
        {
            pieces.push((
                format!("{p}{}", "~".repeat(i / 9)).into_bytes(),
                -(i as f32),
            ));
        }
        Llama2cTokenizer::new(pieces).unwrap()
    })
}

fn bpe_json() -> &'static Vec<u8> {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| {
        let text = "the cat and the hat and the bat sat on the mat. ".repeat(40);
        train_bpe(&text, 270).unwrap().to_bytes().unwrap()
    })
}

/// Damage: bytes overwritten (half of them within the first 512 bytes, where headers are),
/// then an optional cut.
fn damaged(base: &[u8], edits: &[(u32, u8, bool)], cut: Option<u32>) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(at, value, in_head) in edits {
        let span = if in_head {
            bytes.len().min(512)
        } else {
            bytes.len()
        };
        if span > 0 {
            bytes[at as usize % span] = value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut as usize % (bytes.len() + 1));
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(u32, u8, bool)>> {
    prop::collection::vec((any::<u32>(), any::<u8>(), any::<bool>()), 0..6)
}

/// A tokenizer that loaded must encode and decode without panicking.
fn exercise(tokenizer: &Tokenizer) {
    for text in ["", "the cat", "é\u{0}\u{10FFFF}\n\n", "<s>"] {
        if let Ok(ids) = tokenizer.encode(text) {
            let _ = tokenizer.decode(&ids);
        }
    }
    let _ = tokenizer.decode(&[0, 1, 2, u32::MAX]);
}

/// Sizes that once broke something, and their neighbours.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(1 << 12),
        Just((1 << 12) + 1),
        Just(1 << 20),
        Just(1 << 31),
        Just(1 << 32),
        Just(1 << 40),
        Just(1 << 62),
        Just(u64::MAX),
        1u64..64,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_checkpoint_is_an_error_or_a_checkpoint(
        edits in edits(),
        cut in prop::option::of(any::<u32>()),
        fix_crc in any::<bool>(),
    ) {
        let mut bytes = damaged(&checkpoint().to_bytes(), &edits, cut);
        if fix_crc && bytes.len() >= 4 {
            let body = bytes.len() - 4;
            let crc = crc32fast::hash(&bytes[..body]);
            bytes[body..].copy_from_slice(&crc.to_le_bytes());
        }
        let _ = Checkpoint::from_bytes(&bytes, "fuzz");
    }

    /// A header that claims any sizes, with the data of the small model after it and a
    /// correct CRC: refused unless it describes the data.
    #[test]
    fn a_checkpoint_header_claiming_any_sizes_is_checked_before_anything_is_sized(
        dim in size(), layers in size(), vocab in size(), hidden in size(),
    ) {
        let mut ckpt = checkpoint().clone();
        let c = &mut ckpt.header.config;
        (c.dim, c.n_layers, c.vocab, c.hidden) =
            (dim as usize, layers as usize, vocab as usize, hidden as usize);
        let claimed = c.clone();
        let loaded = Checkpoint::from_bytes(&ckpt.to_bytes(), "fuzz");
        if let Ok(back) = loaded {
            prop_assert_eq!(&back.header.config, &claimed);
            prop_assert_eq!(claimed.parameter_count(), ParamLayout::new(&small()).len as u64);
        }
    }

    #[test]
    fn a_damaged_token_file_is_an_error_or_ids_within_the_vocabulary(
        edits in edits(),
        cut in prop::option::of(any::<u32>()),
        vocab in prop_oneof![Just(1usize), Just(300), Just(65_536), Just(65_537), Just(usize::MAX)],
    ) {
        let ids: Vec<u32> = (0..200).map(|i| (i * 37) % 300).collect();
        let small_file = encode_token_file(&TokenIds::from_ids(&ids, 300, "fuzz").unwrap());
        let wide_ids: Vec<u32> = ids.iter().map(|&i| i * 1000).collect();
        let wide_file = encode_token_file(&TokenIds::from_ids(&wide_ids, 300_000, "fuzz").unwrap());
        for base in [small_file, wide_file] {
            let bytes = damaged(&base, &edits, cut);
            if let Ok(tokens) = decode_token_file(&bytes, vocab, "fuzz") {
                prop_assert!(tokens.to_vec().iter().all(|&id| (id as usize) < vocab));
            }
        }
    }

    #[test]
    fn a_damaged_llama2c_tokenizer_is_an_error_or_a_working_tokenizer(
        edits in edits(),
        cut in prop::option::of(any::<u32>()),
    ) {
        let bytes = damaged(&llama2c().to_bytes(), &edits, cut);
        if let Ok(t) = Tokenizer::from_bytes(TokenizerKind::Llama2c, &bytes, "fuzz") {
            exercise(&t);
        }
    }

    #[test]
    fn a_damaged_tokenizer_json_is_an_error_or_a_working_tokenizer(
        edits in edits(),
        cut in prop::option::of(any::<u32>()),
    ) {
        let bytes = damaged(bpe_json(), &edits, cut);
        if let Ok(t) = Tokenizer::from_bytes(TokenizerKind::HuggingFace, &bytes, "fuzz") {
            exercise(&t);
        }
    }

    /// Valid shapes of every kind (grouped-query, wide heads, tied or not): the parameter
    /// count the memory check uses is the layout's.
    #[test]
    fn a_valid_models_parameter_count_is_its_layouts(
        dim in 1usize..200, hidden in 1usize..300, layers in 1usize..5,
        kv in 1usize..5, group in 1usize..4, half_head in 1usize..40,
        vocab in 1usize..2000, tied in any::<bool>(),
    ) {
        let config = ModelConfig {
            name: "m".into(),
            dim,
            hidden,
            n_layers: layers,
            n_heads: kv * group,
            n_kv_heads: kv,
            head_dim: 2 * half_head,
            vocab,
            seq_len: 8,
            tied_embedding: tied,
            qk_norm: false,
            ..ModelConfig::tiny()
        };
        prop_assert!(config.validate().is_ok());
        prop_assert_eq!(config.parameter_count(), ParamLayout::new(&config).len as u64);
    }

    /// Any sizes in a model file: refused by name, or a model whose parameter count is its
    /// layout's (computed without overflow).
    #[test]
    fn a_model_file_with_any_sizes_validates_or_is_refused(
        dim in size(), hidden in size(), layers in size(), heads in size(),
        kv in size(), head_dim in size(), vocab in size(), seq in size(),
        eps in prop_oneof![Just("1e-5"), Just("nan"), Just("-inf"), Just("0.0")],
    ) {
        let text = format!(
            "name = \"m\"\ndim = {dim}\nhidden = {hidden}\nn_layers = {layers}\n\
             n_heads = {heads}\nn_kv_heads = {kv}\nhead_dim = {head_dim}\nvocab = {vocab}\n\
             seq_len = {seq}\nnorm_eps = {eps}\n"
        );
        // TOML integers are i64: a larger one is a parse error, not a panic.
        if let Ok(config) = toml::from_str::<ModelConfig>(&text) {
            if config.validate().is_ok() {
                let count = config.parameter_count();
                if count < 1 << 24 {
                    prop_assert_eq!(count, ParamLayout::new(&config).len as u64);
                }
            }
        }
    }
}

/// Found by the case above: the tokenizers crate panicked ("Helper: Error(EOF while parsing a
/// string …)") on a tokenizer.json cut inside its decoder.
#[test]
fn a_tokenizer_json_cut_inside_its_decoder_is_an_error() {
    let json = bpe_json();
    let decoder = json
        .windows(9)
        .position(|w| w == b"\"decoder\"")
        .expect("a decoder section");
    let cut = &json[..decoder + 20];
    let Err(err) = Tokenizer::from_bytes(TokenizerKind::HuggingFace, cut, "cut.json") else {
        panic!("a cut file is an error");
    };
    let text = err.to_string();
    assert!(
        text.contains("cut.json") && text.contains("not JSON: EOF while parsing"),
        "{text}"
    );
}

/// Valid JSON on which the tokenizers crate panics (its Precompiled normalizer `expect`s a
/// charsmap): the panic becomes an error.
#[test]
fn a_tokenizer_json_the_tokenizers_crate_panics_on_is_an_error() {
    let mut json: serde_json::Value = serde_json::from_slice(bpe_json()).unwrap();
    json["normalizer"] = serde_json::json!({ "type": "Precompiled" });
    let bytes = serde_json::to_vec(&json).unwrap();
    let Err(err) = Tokenizer::from_bytes(TokenizerKind::HuggingFace, &bytes, "odd.json") else {
        panic!("a normalizer without its charsmap is an error");
    };
    let text = err.to_string();
    assert!(
        text.contains("odd.json") && text.contains("the tokenizers crate could not read it"),
        "{text}"
    );
}

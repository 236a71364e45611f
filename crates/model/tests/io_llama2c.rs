//! llama2.c model files: bit-exact round trips, the byte layout `run.c` expects, the published
//! checkpoints' sizes, and clear errors (never panics) for bad files.

use anetrain_model::init::init_params;
use anetrain_model::io::llama2c::{self, Header, Llama2cError, HEADER_BYTES};
use anetrain_model::{LayerTensor, ModelConfig, ParamLayout, Params};
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;

fn small(n_kv_heads: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        name: "small".into(),
        dim: 16,
        hidden: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads,
        head_dim: 4,
        vocab: 13,
        seq_len: 6,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: tied,
        qk_norm: false,
    }
}

fn random(c: &ModelConfig, seed: u64) -> Params {
    init_params(Arc::new(ParamLayout::new(c)), seed)
}

fn bits(p: &Params) -> Vec<u32> {
    p.data.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (kv, tied) in [(4, true), (4, false), (2, true), (1, false)] {
        let c = small(kv, tied);
        let mut params = random(&c, kv as u64);
        // Values that a careless conversion would change: negative zero, subnormals, extremes.
        params.data[0] = -0.0;
        params.data[1] = f32::MIN_POSITIVE / 8.0;
        params.data[2] = f32::MAX;
        let path = dir.path().join(format!("m-{kv}-{tied}.bin"));
        llama2c::write(&path, &params).unwrap();
        let back = llama2c::read(&path).unwrap();
        assert_eq!(
            back.layout.config,
            ModelConfig {
                name: "llama2c".into(),
                ..c.clone()
            }
        );
        assert_eq!(bits(&back), bits(&params));
        let header = Header::for_config(&c).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(Some(size), header.expected_file_size());
    }
}

/// Where `run.c`'s `memory_map_weights` finds each tensor, in floats from the end of the header,
/// transcribed from its pointer arithmetic (independently of the reader).
fn run_c_offsets(c: &ModelConfig) -> Vec<(String, usize, usize)> {
    let (d, h, l, v) = (c.dim, c.hidden, c.n_layers, c.vocab);
    let head_size = d / c.n_heads;
    let kv = c.n_kv_heads * head_size;
    let mut at = 0;
    let mut out = Vec::new();
    let mut take = |name: &str, n: usize| {
        out.push((name.to_string(), at, n));
        at += n;
    };
    take("token_embedding_table", v * d);
    take("rms_att_weight", l * d);
    take("wq", l * d * (c.n_heads * head_size));
    take("wk", l * d * kv);
    take("wv", l * d * kv);
    take("wo", l * (c.n_heads * head_size) * d);
    take("rms_ffn_weight", l * d);
    take("w1", l * d * h);
    take("w2", l * h * d);
    take("w3", l * d * h);
    take("rms_final_weight", d);
    take("freq_cis_real", c.seq_len * head_size / 2);
    take("freq_cis_imag", c.seq_len * head_size / 2);
    if !c.tied_embedding {
        take("wcls", v * d);
    }
    out
}

#[test]
fn tensors_are_where_run_c_looks() {
    // A file whose every float is its own index: reading it shows where each tensor came from.
    let c = small(2, false);
    let sections = run_c_offsets(&c);
    let total: usize = sections.iter().map(|s| s.2).sum();
    let header = Header::for_config(&c).unwrap();
    assert_eq!(
        header.vocab_size, -13,
        "an untied classifier is a negative vocab_size"
    );
    let mut bytes = header.to_bytes().to_vec();
    for i in 0..total {
        bytes.extend((i as f32).to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("indexed.bin");
    std::fs::write(&path, &bytes).unwrap();
    let p = llama2c::read(&path).unwrap();

    let section = |name: &str| sections.iter().find(|s| s.0 == name).unwrap().1;
    let check = |got: &[f32], start: usize, what: &str| {
        for (j, &x) in got.iter().enumerate() {
            assert_eq!(x, (start + j) as f32, "{what}[{j}]");
        }
    };
    check(
        p.get(p.layout.embed()),
        section("token_embedding_table"),
        "embed",
    );
    check(
        p.get(p.layout.rms_final()),
        section("rms_final_weight"),
        "rms_final",
    );
    check(p.get(p.layout.classifier()), section("wcls"), "classifier");
    let run_c_name = |t: LayerTensor| match t {
        LayerTensor::RmsAtt => "rms_att_weight",
        LayerTensor::RmsFfn => "rms_ffn_weight",
        other => other.short_name(),
    };
    for l in 0..c.n_layers {
        for t in LayerTensor::ALL {
            let n = p.layer(l, t).len();
            // run.c: w->wk + l*dim*kv_dim, and so on: layer l starts l tensors in.
            check(
                p.layer(l, t),
                section(run_c_name(t)) + l * n,
                &format!("layers.{l}.{}", t.short_name()),
            );
        }
    }
}

#[test]
fn writes_the_legacy_rope_tables() {
    let c = small(4, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bin");
    llama2c::write(&path, &random(&c, 1)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let sections = run_c_offsets(&c);
    let table = |name: &str| {
        let s = sections.iter().find(|s| s.0 == name).unwrap();
        let at = HEADER_BYTES as usize + 4 * s.1;
        bytes[at..at + 4 * s.2]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    let (real, imag) = (table("freq_cis_real"), table("freq_cis_imag"));
    // [seq_len][head_dim/2]; position 5, pair 1: angle 5·10000^(−2/4) = 0.05.
    assert_eq!(real[0], 1.0);
    assert_eq!(imag[0], 0.0);
    assert!((real[5 * 2 + 1] - 0.05f32.cos()).abs() < 1e-7);
    assert!((imag[5 * 2 + 1] - 0.05f32.sin()).abs() < 1e-7);
}

#[test]
fn published_checkpoint_sizes() {
    // stories15M.bin (karpathy/tinyllamas) is 60,816,028 bytes.
    let stories15m = Header {
        dim: 288,
        hidden_dim: 768,
        n_layers: 6,
        n_heads: 6,
        n_kv_heads: 6,
        vocab_size: 32000,
        seq_len: 256,
    };
    assert_eq!(stories15m.expected_file_size(), Some(60_816_028));
    // The spec's parameter count for stories110M (section 7.1), from our layout.
    let l110 = ParamLayout::new(&ModelConfig::named("stories110m").unwrap());
    assert_eq!(l110.len, 109_529_856);
    // The header formula and our layout agree for every preset llama2.c can express.
    for name in ["tiny", "stories15m", "stories42m", "stories110m"] {
        let c = ModelConfig::named(name).unwrap();
        let layout = ParamLayout::new(&c);
        let header = Header::for_config(&c).unwrap();
        let tables = 2 * c.seq_len * c.head_dim / 2;
        let formula = HEADER_BYTES + 4 * (layout.len + tables) as u64;
        assert_eq!(header.expected_file_size(), Some(formula), "{name}");
        assert_eq!(header.config().dim, c.dim);
    }
    assert_eq!(
        Header::for_config(&ModelConfig::named("stories15m").unwrap()).unwrap(),
        stories15m
    );
}

#[test]
fn a_stories15m_shaped_file_loads() {
    // Sparse: the header and the right length, without writing 60 MB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stories15M.bin");
    let header = Header::for_config(&ModelConfig::named("stories15m").unwrap()).unwrap();
    write_header_and_len(&path, &header, 60_816_028);
    let p = llama2c::read(&path).unwrap();
    let c = &p.layout.config;
    assert_eq!(
        (c.dim, c.hidden, c.n_layers, c.n_heads, c.vocab, c.seq_len),
        (288, 768, 6, 6, 32000, 256)
    );
    assert!(c.tied_embedding);
    assert_eq!(c.head_dim, 48);
}

fn write_header_and_len(path: &Path, header: &Header, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut &f, &header.to_bytes()).unwrap();
    f.set_len(len).unwrap();
}

fn read_err(path: &Path) -> Llama2cError {
    let err = llama2c::read(path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the error must name the file: {message}"
    );
    err
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.bin");
    let good = Header::for_config(&small(2, true)).unwrap();
    let size = good.expected_file_size().unwrap();

    assert!(matches!(
        read_err(&dir.path().join("absent.bin")),
        Llama2cError::Read { .. }
    ));

    std::fs::write(&path, [1u8; 10]).unwrap();
    assert!(matches!(
        read_err(&path),
        Llama2cError::TruncatedHeader { len: 10, .. }
    ));

    write_header_and_len(&path, &good, size - 1);
    let err = read_err(&path);
    assert!(matches!(err, Llama2cError::SizeMismatch { .. }));
    assert!(err.to_string().contains("truncated"), "{err}");

    write_header_and_len(&path, &good, size + 4);
    let err = read_err(&path);
    assert!(err.to_string().contains("trailing bytes"), "{err}");

    let cases: [(Header, &str); 7] = [
        (Header { dim: 0, ..good }, "dim is 0"),
        (
            Header {
                n_layers: -3,
                ..good
            },
            "n_layers is -3",
        ),
        (
            Header {
                vocab_size: 0,
                ..good
            },
            "vocab_size 0",
        ),
        (
            Header { n_heads: 3, ..good },
            "n_heads 3 does not divide dim 16",
        ),
        (
            Header {
                n_kv_heads: 3,
                ..good
            },
            "n_kv_heads 3 does not divide n_heads 4",
        ),
        (
            Header {
                dim: 12,
                n_heads: 4,
                n_kv_heads: 4,
                ..good
            },
            "head_dim = dim / n_heads = 3 is odd",
        ),
        (
            Header {
                dim: 1 << 30,
                hidden_dim: i32::MAX,
                n_layers: i32::MAX,
                n_heads: 1 << 29,
                n_kv_heads: 1 << 29,
                ..good
            },
            "overflow",
        ),
    ];
    for (header, words) in cases {
        write_header_and_len(&path, &header, size);
        let err = read_err(&path);
        assert!(
            matches!(
                err,
                Llama2cError::BadHeader { .. } | Llama2cError::SizeMismatch { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(words), "{err} should say {words}");
    }

    // llama2.c's newer versioned exports start with the magic "ak42" and a version.
    let mut bytes = 0x616b_3432u32.to_le_bytes().to_vec();
    bytes.extend(2i32.to_le_bytes());
    bytes.resize(256, 0);
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        read_err(&path),
        Llama2cError::Versioned { version: 2, .. }
    ));
}

#[test]
fn configurations_llama2c_cannot_express_are_refused() {
    let qwen = ModelConfig::named("qwen3-0.6b").unwrap();
    let err = Header::for_config(&qwen).unwrap_err();
    assert!(err.to_string().contains("head_dim"), "{err}");
    let norms = ModelConfig {
        qk_norm: true,
        ..small(4, true)
    };
    let err = Header::for_config(&norms).unwrap_err();
    assert!(
        err.to_string()
            .contains("per-head q/k norms (Qwen3) are not part of run.c's model"),
        "{err}"
    );

    let theta = ModelConfig {
        rope_theta: 500000.0,
        ..small(4, true)
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bin");
    let err = llama2c::write(&path, &random(&theta, 1)).unwrap_err();
    assert!(matches!(err, Llama2cError::Unrepresentable { .. }));
    assert!(err.to_string().contains("rope_theta"), "{err}");
    assert!(!path.exists(), "nothing is written for a refused model");

    let err = llama2c::write(
        &dir.path().join("no/such/dir/m.bin"),
        &random(&small(4, true), 1),
    )
    .unwrap_err();
    assert!(matches!(err, Llama2cError::Write { .. }));
}

#[test]
fn writes_replace_files_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bin");
    std::fs::write(&path, b"old contents").unwrap();
    let params = random(&small(4, true), 3);
    llama2c::write(&path, &params).unwrap();
    assert_eq!(bits(&llama2c::read(&path).unwrap()), bits(&params));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["m.bin"], "no temporary file is left behind");
}

fn valid_file_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bin");
    llama2c::write(&path, &random(&small(2, false), 9)).unwrap();
    std::fs::read(&path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Truncations and header corruptions of a valid file are errors or (when the corruption
    /// still describes a consistent file) a model, never a panic.
    #[test]
    fn damaged_files_never_panic(
        cut in 0usize..3000,
        flips in proptest::collection::vec((0usize..28, any::<u8>()), 0..4),
    ) {
        let mut bytes = valid_file_bytes();
        let keep = bytes.len().saturating_sub(cut);
        bytes.truncate(keep);
        for (at, value) in flips {
            if at < bytes.len() {
                bytes[at] = value;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.bin");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = llama2c::read(&path) {
            prop_assert!(e.to_string().contains(&path.display().to_string()));
        }
    }
}

//! safetensors with Hugging Face Llama names: bit-exact round trips, the names and shapes a
//! `transformers` Llama expects, the RoPE row permutation (checked against its definition in
//! llama2.c's export.py and against the two RoPE conventions themselves), F16/BF16 import, and
//! clear errors for bad files.

use anetrain_model::init::init_params;
use anetrain_model::io::safetensors::{
    self as st, half_split_source_rows, half_split_to_interleaved, interleaved_to_half_split,
    SafetensorsError,
};
use anetrain_model::{LayerTensor, ModelConfig, ParamLayout, Params};
use half::{bf16, f16};
use proptest::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

fn small(n_kv_heads: usize, head_dim: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        name: "small".into(),
        dim: 16,
        hidden: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads,
        head_dim,
        vocab: 13,
        seq_len: 6,
        norm_eps: 1e-6,
        rope_theta: 500000.0,
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

// ---------------------------------------------------------------------------------------------
// The RoPE permutation.

/// torch's `w.view(a, b, c, cols).transpose(1, 2).reshape(a·b·c, cols)` on a row-major matrix,
/// written literally: output row (i, k, j) is input row (i, j, k).
fn view_transpose_12(w: &[f32], a: usize, b: usize, c: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for i in 0..a {
        for k in 0..c {
            for j in 0..b {
                let row = (i * b + j) * c + k;
                out.extend_from_slice(&w[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

/// llama2.c export.py, `permute_original` (ours → Hugging Face, used by `hf_export`):
/// `w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)`.
fn permute_original(w: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    view_transpose_12(w, n_heads, head_dim / 2, 2, cols)
}

/// llama2.c export.py, `permute_reverse` (Hugging Face → ours, used by `load_hf_model`):
/// `w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)`.
fn permute_reverse(w: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    view_transpose_12(w, n_heads, 2, head_dim / 2, cols)
}

#[test]
fn permutation_hand_checked_example() {
    // head_dim 4, pairs (0, 1) and (2, 3); HF pairs rows i and i + 2: rows [0, 2, 1, 3].
    assert_eq!(half_split_source_rows(4), [0, 2, 1, 3]);
    assert_eq!(half_split_source_rows(8), [0, 2, 4, 6, 1, 3, 5, 7]);
    // Two heads of width 4, one column: each head permuted on its own.
    let ours = [10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0];
    let hf = [10.0, 12.0, 11.0, 13.0, 20.0, 22.0, 21.0, 23.0];
    assert_eq!(interleaved_to_half_split(&ours, 2, 1), hf);
    assert_eq!(half_split_to_interleaved(&hf, 2, 1), ours);
    assert_eq!(permute_original(&ours, 2, 4, 1), hf);
    assert_eq!(permute_reverse(&hf, 2, 4, 1), ours);
}

#[test]
fn permutation_matches_llama2c_export_and_round_trips() {
    // head_dim 8 (where the permutation is not its own inverse), 3 heads, 5 columns.
    let (n_heads, head_dim, cols) = (3, 8, 5);
    let w: Vec<f32> = (0..n_heads * head_dim * cols).map(|i| i as f32).collect();
    let hf = interleaved_to_half_split(&w, n_heads, cols);
    assert_eq!(hf, permute_original(&w, n_heads, head_dim, cols));
    assert_ne!(hf, w);
    let back = half_split_to_interleaved(&hf, n_heads, cols);
    assert_eq!(back, w);
    assert_eq!(
        half_split_to_interleaved(&w, n_heads, cols),
        permute_reverse(&w, n_heads, head_dim, cols)
    );
    assert_eq!(
        permute_reverse(
            &permute_original(&w, n_heads, head_dim, cols),
            n_heads,
            head_dim,
            cols
        ),
        w
    );
}

fn angle(pos: usize, i: usize, head_dim: usize, theta: f64) -> f64 {
    pos as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64)
}

/// Our RoPE: pair (x[2i], x[2i+1]) rotated by θ_i.
fn rope_interleaved(x: &[f64], pos: usize, theta: f64) -> Vec<f64> {
    let hd = x.len();
    let mut out = x.to_vec();
    for i in 0..hd / 2 {
        let (s, c) = angle(pos, i, hd, theta).sin_cos();
        out[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
        out[2 * i + 1] = x[2 * i] * s + x[2 * i + 1] * c;
    }
    out
}

/// Hugging Face's RoPE: x·cos + rotate_half(x)·sin, i.e. (x[i], x[i + hd/2]) rotated by θ_i.
fn rope_half_split(x: &[f64], pos: usize, theta: f64) -> Vec<f64> {
    let hd = x.len();
    let half = hd / 2;
    let mut out = x.to_vec();
    for i in 0..half {
        let (s, c) = angle(pos, i, hd, theta).sin_cos();
        out[i] = x[i] * c - x[i + half] * s;
        out[i + half] = x[i + half] * c + x[i] * s;
    }
    out
}

#[test]
fn permutation_turns_one_rope_convention_into_the_other() {
    // A projection's output rows are the matrix's rows, so permuting Wq's rows permutes q. HF's
    // RoPE on the permuted q must be the permutation of our RoPE on q, at every position.
    let head_dim = 8;
    let q: Vec<f32> = (0..head_dim)
        .map(|i| (i as f32 * 0.7).sin() + 0.1)
        .collect();
    let q_hf = interleaved_to_half_split(&q, 1, 1);
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    for pos in 0..7 {
        let ours = rope_interleaved(&wide(&q), pos, 10000.0);
        let theirs = rope_half_split(&wide(&q_hf), pos, 10000.0);
        let src = half_split_source_rows(head_dim);
        for (j, &s) in src.iter().enumerate() {
            assert!((theirs[j] - ours[s]).abs() < 1e-12, "pos {pos}, row {j}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and the file's contents.

#[test]
fn round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    // MHA tied, GQA untied, a head width that is not dim / n_heads (as in Qwen3), and
    // Qwen3's q/k norms.
    let qwen3 = ModelConfig {
        qk_norm: true,
        ..small(2, 6, true)
    };
    for (n, c) in [
        small(4, 4, true),
        small(2, 4, false),
        small(2, 6, true),
        qwen3,
    ]
    .into_iter()
    .enumerate()
    {
        let mut params = random(&c, n as u64);
        // Norm weights that differ, so a permutation that is not inverted would show.
        for spec in params.layout.tensors.clone() {
            if spec.name.ends_with("_norm") {
                for (i, v) in params.data[spec.range].iter_mut().enumerate() {
                    *v = i as f32;
                }
            }
        }
        params.data[0] = -0.0;
        params.data[1] = f32::MIN_POSITIVE / 8.0;
        let path = dir.path().join(format!("m{n}.safetensors"));
        st::write(&path, &params).unwrap();
        // With the configuration recorded in the file, and with one given by the caller.
        let back = st::read(&path, None).unwrap();
        assert_eq!(back.layout.config, c);
        assert_eq!(bits(&back), bits(&params));
        let given = st::read(&path, Some(&c)).unwrap();
        assert_eq!(bits(&given), bits(&params));
    }
}

fn hf_names(c: &ModelConfig) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".into(),
    ];
    for l in 0..c.n_layers {
        for s in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        ] {
            names.push(format!("model.layers.{l}.{s}.weight"));
        }
    }
    if !c.tied_embedding {
        names.push("lm_head.weight".into());
    }
    names.sort();
    names
}

fn f32s(view: &TensorView<'_>) -> Vec<f32> {
    assert_eq!(view.dtype(), Dtype::F32);
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn file_has_hugging_face_names_shapes_and_order() {
    let c = small(2, 6, false);
    let params = random(&c, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    st::write(&path, &params).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, hf_names(&c));
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let extra = metadata.metadata().as_ref().unwrap();
    assert_eq!(extra["format"], "pt");

    let get = |name: &str| file.tensor(name).unwrap();
    let l1 = |s: &str| get(&format!("model.layers.1.{s}.weight"));
    let same = |name: &str, view: TensorView<'_>, ours: &[f32], shape: &[usize]| {
        assert_eq!(view.shape(), shape, "{name}");
        assert_eq!(f32s(&view), ours, "{name}");
    };
    let (d, h, v) = (c.dim, c.hidden, c.vocab);
    same(
        "embed",
        get("model.embed_tokens.weight"),
        params.get(params.layout.embed()),
        &[v, d],
    );
    same(
        "lm_head",
        get("lm_head.weight"),
        params.get(params.layout.classifier()),
        &[v, d],
    );
    same(
        "norm",
        get("model.norm.weight"),
        params.get(params.layout.rms_final()),
        &[d],
    );
    let layer = |t| params.layer(1, t);
    same(
        "input_layernorm",
        l1("input_layernorm"),
        layer(LayerTensor::RmsAtt),
        &[d],
    );
    same(
        "post_attention_layernorm",
        l1("post_attention_layernorm"),
        layer(LayerTensor::RmsFfn),
        &[d],
    );
    same(
        "v_proj",
        l1("self_attn.v_proj"),
        layer(LayerTensor::Wv),
        &[c.kv_dim(), d],
    );
    same(
        "o_proj",
        l1("self_attn.o_proj"),
        layer(LayerTensor::Wo),
        &[d, c.q_dim()],
    );
    same(
        "gate = W1",
        l1("mlp.gate_proj"),
        layer(LayerTensor::W1),
        &[h, d],
    );
    same(
        "up = W3",
        l1("mlp.up_proj"),
        layer(LayerTensor::W3),
        &[h, d],
    );
    same(
        "down = W2",
        l1("mlp.down_proj"),
        layer(LayerTensor::W2),
        &[d, h],
    );
    // q and k are stored in Hugging Face's half-split order, per query and per key/value head.
    let q_hf = permute_original(layer(LayerTensor::Wq), c.n_heads, c.head_dim, d);
    same("q_proj", l1("self_attn.q_proj"), &q_hf, &[c.q_dim(), d]);
    let k_hf = permute_original(layer(LayerTensor::Wk), c.n_kv_heads, c.head_dim, d);
    same("k_proj", l1("self_attn.k_proj"), &k_hf, &[c.kv_dim(), d]);
}

// ---------------------------------------------------------------------------------------------
// Files made with the safetensors crate directly, for other dtypes and for damage.

struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// The tensors of one of our exports, to be edited.
fn entries(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, v)| Entry {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect()
}

fn save(path: &Path, entries: &[Entry], metadata: Option<HashMap<String, String>>) {
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|e| {
            let view = TensorView::new(e.dtype, e.shape.clone(), &e.data).unwrap();
            (e.name.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
}

fn to_half(e: &mut Entry, dtype: Dtype) {
    let values: Vec<f32> = e
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    e.data = values
        .iter()
        .flat_map(|&x| match dtype {
            Dtype::F16 => f16::from_f32(x).to_le_bytes(),
            _ => bf16::from_f32(x).to_le_bytes(),
        })
        .collect();
    e.dtype = dtype;
}

#[test]
fn imports_f16_and_bf16() {
    let c = small(2, 4, false);
    let params = random(&c, 8);
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("f32.safetensors");
    st::write(&exported, &params).unwrap();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let mut es = entries(&exported);
        es.iter_mut().for_each(|e| to_half(e, dtype));
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        // No recorded configuration, as in a Hugging Face checkpoint: the caller gives it.
        save(&path, &es, None);
        let back = st::read(&path, Some(&c)).unwrap();
        let round = |x: f32| match dtype {
            Dtype::F16 => f16::from_f32(x).to_f32(),
            _ => bf16::from_f32(x).to_f32(),
        };
        let expect: Vec<f32> = params.data.iter().map(|&x| round(x)).collect();
        assert_eq!(back.data, expect, "{dtype:?}");
        assert!(matches!(
            st::read(&path, None).unwrap_err(),
            SafetensorsError::NoConfig { .. }
        ));
    }
}

fn expect_err(path: &Path, c: &ModelConfig) -> SafetensorsError {
    let err = st::read(path, Some(c)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the error must name the file: {message}"
    );
    err
}

#[test]
fn bad_tensors_give_clear_errors() {
    let c = small(2, 4, false);
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("good.safetensors");
    st::write(&exported, &random(&c, 2)).unwrap();
    let path = dir.path().join("bad.safetensors");
    let edited = |edit: &dyn Fn(&mut Vec<Entry>)| {
        let mut es = entries(&exported);
        edit(&mut es);
        save(&path, &es, None);
    };

    edited(&|es| es.retain(|e| e.name != "model.layers.1.mlp.up_proj.weight"));
    let err = expect_err(&path, &c);
    assert!(matches!(err, SafetensorsError::Missing { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("model.layers.1.mlp.up_proj.weight"));

    edited(&|es| {
        let e = es
            .iter_mut()
            .find(|e| e.name == "model.layers.0.self_attn.k_proj.weight");
        e.unwrap().shape = vec![16, 8];
    });
    let err = expect_err(&path, &c);
    assert!(matches!(err, SafetensorsError::Shape { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("model.layers.0.self_attn.k_proj.weight")
            && message.contains("[16, 8]")
            && message.contains("[8, 16]"),
        "{message}"
    );

    edited(&|es| {
        es.push(Entry {
            name: "model.layers.0.self_attn.q_norm.weight".into(),
            dtype: Dtype::F32,
            shape: vec![4],
            data: vec![0; 16],
        })
    });
    let err = expect_err(&path, &c);
    assert!(matches!(err, SafetensorsError::Unexpected { .. }), "{err}");
    assert!(err.to_string().contains("q_norm"));

    edited(&|es| {
        let e = es
            .iter_mut()
            .find(|e| e.name == "model.norm.weight")
            .unwrap();
        e.dtype = Dtype::I32;
    });
    let err = expect_err(&path, &c);
    assert!(matches!(err, SafetensorsError::Dtype { .. }), "{err}");
    assert!(err.to_string().contains("model.norm.weight"));

    // Old checkpoints carry RoPE frequency buffers; they are recomputed, not refused.
    edited(&|es| {
        es.push(Entry {
            name: "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: vec![0; 8],
        })
    });
    assert!(st::read(&path, Some(&c)).is_ok());
}

#[test]
fn tied_configuration_and_a_separate_head() {
    let untied = small(4, 4, false);
    let tied = ModelConfig {
        tied_embedding: true,
        qk_norm: false,
        ..untied.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    // A different lm_head cannot be folded into a tied model.
    st::write(&path, &random(&untied, 4)).unwrap();
    let err = expect_err(&path, &tied);
    assert!(matches!(err, SafetensorsError::UntiedHead { .. }), "{err}");
    // An identical one (as some exports store) is accepted.
    let mut params = random(&untied, 4);
    let embed = params.get(params.layout.embed()).to_vec();
    let cls = params.layout.classifier();
    params.get_mut(cls).copy_from_slice(&embed);
    st::write(&path, &params).unwrap();
    let back = st::read(&path, Some(&tied)).unwrap();
    assert_eq!(back.data[..], params.data[..back.data.len()]);
    // An untied model needs its lm_head.
    let tied_file = dir.path().join("tied.safetensors");
    st::write(&tied_file, &random(&tied, 4)).unwrap();
    let err = expect_err(&tied_file, &untied);
    assert!(err.to_string().contains("lm_head.weight"), "{err}");
}

#[test]
fn bad_files_give_clear_errors() {
    let c = small(4, 4, true);
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.safetensors");
    assert!(matches!(
        expect_err(&absent, &c),
        SafetensorsError::Read { .. }
    ));
    let path = dir.path().join("m.safetensors");
    st::write(&path, &random(&c, 1)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 7, 8, 100, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = expect_err(&path, &c);
        assert!(matches!(err, SafetensorsError::Format { .. }), "{err}");
    }
    std::fs::write(&path, b"not a safetensors file at all").unwrap();
    assert!(matches!(
        expect_err(&path, &c),
        SafetensorsError::Format { .. }
    ));

    let err = st::write(&dir.path().join("no/dir/m.safetensors"), &random(&c, 1)).unwrap_err();
    assert!(matches!(err, SafetensorsError::Write { .. }));
}

#[test]
fn a_damaged_recorded_configuration_is_refused_before_allocating() {
    let c = small(4, 4, true);
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("good.safetensors");
    st::write(&exported, &random(&c, 1)).unwrap();
    let bytes = std::fs::read(&exported).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let recorded = metadata.metadata().clone().unwrap();
    let path = dir.path().join("bad.safetensors");
    let with_config = |from: &str, to: &str| {
        let mut m = recorded.clone();
        let text = m[st::CONFIG_KEY].replace(from, to);
        assert_ne!(text, m[st::CONFIG_KEY], "{from} not in the recorded config");
        m.insert(st::CONFIG_KEY.into(), text);
        save(&path, &entries(&exported), Some(m));
        st::read(&path, None).unwrap_err()
    };
    // Two billion layers: beyond the bound, refused by name before anything is sized.
    let err = with_config("n_layers = 2", "n_layers = 2000000000");
    assert!(matches!(err, SafetensorsError::BadConfig { .. }), "{err}");
    assert!(
        err.to_string().contains("n_layers = 2000000000 is beyond"),
        "{err}"
    );
    // Within the bound: the first absent layer is reported.
    let err = with_config("n_layers = 2", "n_layers = 4000");
    assert!(err.to_string().contains("model.layers.2."), "{err}");
    let err = with_config("vocab = 13", "vocab = 1300000000000");
    assert!(matches!(err, SafetensorsError::BadConfig { .. }), "{err}");
    let err = with_config("n_heads = 4", "n_heads = 3");
    assert!(matches!(err, SafetensorsError::BadConfig { .. }), "{err}");
}

#[test]
fn a_different_configuration_is_a_shape_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    st::write(&path, &random(&small(4, 4, true), 1)).unwrap();
    let wider = ModelConfig {
        hidden: 32,
        ..small(4, 4, true)
    };
    let err = expect_err(&path, &wider);
    assert!(matches!(err, SafetensorsError::Shape { .. }), "{err}");
}

#[test]
fn writes_replace_files_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, b"old").unwrap();
    let params = random(&small(4, 4, true), 3);
    st::write(&path, &params).unwrap();
    assert_eq!(bits(&st::read(&path, None).unwrap()), bits(&params));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["m.safetensors"], "no temporary file is left behind");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Truncated or byte-flipped files are errors (or, if the flip lands in tensor data, a
    /// model), never a panic.
    #[test]
    fn damaged_files_never_panic(
        cut in 0usize..2000,
        flips in proptest::collection::vec((0usize..1200, any::<u8>()), 0..4),
    ) {
        let c = small(2, 4, false);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        st::write(&path, &random(&c, 1)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let keep = bytes.len().saturating_sub(cut);
        bytes.truncate(keep);
        for (at, value) in flips {
            if at < bytes.len() {
                bytes[at] = value;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        for config in [Some(&c), None] {
            if let Err(e) = st::read(&path, config) {
                prop_assert!(e.to_string().contains(&path.display().to_string()));
            }
        }
    }
}

/// A per-head norm's weight is stored in Hugging Face's order of one head's rows: the file's
/// `q_norm` is ours permuted like the rows of one head of Wq.
#[test]
fn qk_norm_weights_are_permuted_like_one_heads_rows() {
    let c = ModelConfig {
        qk_norm: true,
        ..small(2, 8, false)
    };
    let mut params = random(&c, 3);
    let ours: Vec<f32> = (0..8).map(|i| i as f32).collect();
    params
        .layer_mut(1, LayerTensor::QNorm)
        .copy_from_slice(&ours);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.safetensors");
    st::write(&path, &params).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let stored = f32s(
        &file
            .tensor("model.layers.1.self_attn.q_norm.weight")
            .unwrap(),
    );
    assert_eq!(stored, [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
    // A Llama model does not take a file with q/k norms: they would be dropped.
    let llama = ModelConfig {
        qk_norm: false,
        ..c.clone()
    };
    let err = st::read(&path, Some(&llama)).unwrap_err().to_string();
    assert!(
        err.contains("_norm.weight` is not part of a Llama model"),
        "{err}"
    );
}

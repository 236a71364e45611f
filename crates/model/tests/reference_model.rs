//! Checks of the reference model itself: its gradient against finite differences of its own
//! loss, and the conventions it must follow (RoPE pairs, GQA head mapping, causality, tying).

mod reference;

use anetrain_model::{LayerTensor, ModelConfig, ParamLayout, Params};
use std::sync::Arc;

/// xorshift64*: a test-local generator, so these checks depend on nothing in the crate but the
/// layout.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [−scale, scale).
    fn sym(&mut self, scale: f64) -> f64 {
        (2.0 * self.uniform() - 1.0) * scale
    }

    fn below(&mut self, n: usize) -> u32 {
        (self.uniform() * n as f64) as u32 % n as u32
    }
}

#[allow(clippy::too_many_arguments)]
fn config(
    dim: usize,
    hidden: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    tied: bool,
    rope_theta: f32,
) -> ModelConfig {
    let c = ModelConfig {
        name: format!("ref-{dim}-{n_heads}x{head_dim}-kv{n_kv_heads}-tied{tied}"),
        dim,
        hidden,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab: 11,
        seq_len: 5,
        norm_eps: 1e-5,
        rope_theta,
        tied_embedding: tied,
        qk_norm: false,
    };
    c.validate().unwrap();
    c
}

/// The small configurations of the finite-difference check: MHA and GQA, tied and untied, a
/// head width that is not dim / n_heads, a small RoPE base so the rotations are large, and
/// Qwen3's q/k norms.
fn small_configs() -> Vec<ModelConfig> {
    let mut out = Vec::new();
    for tied in [true, false] {
        for kv in [1, 2] {
            out.push(config(8, 12, 2, 2, kv, 4, tied, 10000.0));
        }
    }
    out.push(config(8, 12, 2, 4, 2, 2, false, 10000.0));
    out.push(config(8, 12, 2, 2, 1, 6, true, 3.0));
    for c in [
        config(8, 12, 2, 2, 1, 6, true, 3.0),
        config(8, 12, 2, 4, 2, 4, false, 100.0),
    ] {
        out.push(qk_norm(c));
    }
    out
}

fn qk_norm(c: ModelConfig) -> ModelConfig {
    ModelConfig {
        name: format!("{}-qknorm", c.name),
        qk_norm: true,
        ..c
    }
}

/// Weights large enough that every path contributes (norm weights around 1).
fn random_params(c: &ModelConfig, seed: u64) -> Params {
    let layout = Arc::new(ParamLayout::new(c));
    let mut p = Params::zeros(layout.clone());
    let mut rng = Rng(seed | 1);
    for t in &layout.tensors {
        let is_norm = t.shape[0] == 1;
        for v in &mut p.data[t.range.clone()] {
            *v = if is_norm {
                1.0 + rng.sym(0.3)
            } else {
                rng.sym(0.6)
            } as f32;
        }
    }
    p
}

fn random_tokens(c: &ModelConfig, rng: &mut Rng) -> Vec<u32> {
    (0..c.seq_len).map(|_| rng.below(c.vocab)).collect()
}

/// The five-point central difference (f(−2h) − 8f(−h) + 8f(h) − f(2h)) / 12h, whose error is
/// O(h⁴): at h = 1e-3 truncation and rounding both stay far below the tolerance.
fn finite_difference(f: impl Fn(&[f64]) -> f64, w: &[f64], i: usize, h: f64) -> f64 {
    let mut x = w.to_vec();
    let mut at = |delta: f64| {
        x[i] = w[i] + delta;
        f(&x)
    };
    let (m2, m1, p1, p2) = (at(-2.0 * h), at(-h), at(h), at(2.0 * h));
    (m2 - 8.0 * m1 + 8.0 * p1 - p2) / (12.0 * h)
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng(0x5eed);
    for (n, c) in small_configs().into_iter().enumerate() {
        let params = random_params(&c, 1000 + n as u64);
        let tokens = random_tokens(&c, &mut rng);
        let mut targets = random_tokens(&c, &mut rng);
        // Every other configuration trains on some positions only, as fine-tuning does.
        if n % 2 == 1 {
            for t in targets.iter_mut().step_by(3) {
                *t = u32::MAX;
            }
        }
        let layout = params.layout.clone();
        let w = reference::widen(&params);
        let (loss, grads) = reference::loss_and_grads_f64(&layout, &w, &tokens, &targets);
        assert!(loss.is_finite() && loss > 0.0);
        assert_eq!(grads.len(), layout.len);
        let f = |x: &[f64]| reference::loss_f64(&layout, x, &tokens, &targets);
        // For the log: the largest absolute error, and the largest relative error among
        // entries whose gradient is not tiny.
        let (mut worst_abs, mut worst_rel) = (0.0f64, 0.0f64);
        for t in &layout.tensors {
            for i in t.range.clone() {
                let fd = finite_difference(f, &w, i, 1e-3);
                let err = (fd - grads[i]).abs();
                let rel = err / fd.abs().max(grads[i].abs());
                assert!(
                    err <= 1e-9 || rel <= 1e-6,
                    "{}: {} [{}]: analytic {} vs finite difference {fd} (abs {err:e}, rel {rel:e})",
                    c.name,
                    t.name,
                    i - t.range.start,
                    grads[i]
                );
                worst_abs = worst_abs.max(err);
                if grads[i].abs() > 1e-6 {
                    worst_rel = worst_rel.max(rel);
                }
            }
        }
        eprintln!(
            "{}: {} gradients, largest error {worst_abs:e} absolute, {worst_rel:e} relative",
            c.name, layout.len
        );
    }
}

/// Every gradient entry is non-trivial somewhere: the check above would pass vacuously for a
/// tensor whose gradient and finite difference were both zero.
#[test]
fn every_tensor_gets_a_gradient() {
    let c = qk_norm(config(8, 12, 2, 4, 2, 4, false, 10000.0));
    let params = random_params(&c, 7);
    let mut rng = Rng(99);
    let tokens = random_tokens(&c, &mut rng);
    let targets = random_tokens(&c, &mut rng);
    let (_, grads) = reference::loss_and_grads(&params, &tokens, &targets);
    for t in &params.layout.tensors {
        let norm: f64 = grads[t.range.clone()].iter().map(|g| g * g).sum();
        // The embedding rows of absent tokens have no gradient; the tensor as a whole does.
        assert!(norm > 1e-12, "{} has a zero gradient", t.name);
    }
}

#[test]
fn rope_rotates_interleaved_pairs() {
    // Head width 4: pairs (0, 1) and (2, 3), with θ_0 = p and θ_1 = p·theta^(−1/2).
    let mut v = vec![1.0, 0.0, 0.0, 2.0];
    reference::rope(&mut v, 4, 3, 100.0, 1.0);
    let (a0, a1): (f64, f64) = (3.0, 3.0 * 0.1);
    let expect = [a0.cos(), a0.sin(), -2.0 * a1.sin(), 2.0 * a1.cos()];
    for (x, e) in v.iter().zip(expect) {
        assert!((x - e).abs() < 1e-14, "{v:?} vs {expect:?}");
    }
    // Position 0 is the identity; the rotation by −θ undoes it.
    let mut w = vec![0.3, -1.2, 0.5, 0.7, 1.0, 2.0, 3.0, 4.0];
    let orig = w.clone();
    reference::rope(&mut w, 4, 0, 10000.0, 1.0);
    assert_eq!(w, orig);
    reference::rope(&mut w, 4, 5, 10000.0, 1.0);
    reference::rope(&mut w, 4, 5, 10000.0, -1.0);
    for (x, o) in w.iter().zip(&orig) {
        assert!((x - o).abs() < 1e-14);
    }
}

/// An MHA model whose query head h has key/value head `map(h)`'s weights of a GQA model.
fn expand_kv(gqa: &Params, map: impl Fn(usize) -> usize) -> Params {
    let c = &gqa.layout.config;
    let mha_config = ModelConfig {
        n_kv_heads: c.n_heads,
        ..c.clone()
    };
    let mut mha = Params::zeros(Arc::new(ParamLayout::new(&mha_config)));
    let rows = c.head_dim * c.dim;
    for l in 0..c.n_layers {
        for t in LayerTensor::ALL {
            if matches!(t, LayerTensor::Wk | LayerTensor::Wv) {
                let src = gqa.layer(l, t).to_vec();
                let dst = mha.layer_mut(l, t);
                for h in 0..c.n_heads {
                    let from = map(h) * rows;
                    dst[h * rows..(h + 1) * rows].copy_from_slice(&src[from..from + rows]);
                }
            } else {
                mha.layer_mut(l, t).copy_from_slice(gqa.layer(l, t));
            }
        }
    }
    mha.get_mut(mha.layout.embed())
        .copy_from_slice(gqa.get(gqa.layout.embed()));
    mha.get_mut(mha.layout.rms_final())
        .copy_from_slice(gqa.get(gqa.layout.rms_final()));
    if !c.tied_embedding {
        mha.get_mut(mha.layout.classifier())
            .copy_from_slice(gqa.get(gqa.layout.classifier()));
    }
    mha
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn gqa_is_repeat_interleave() {
    // 4 query heads on 2 key/value heads: heads 0, 1 use kv 0 and heads 2, 3 use kv 1.
    let c = config(16, 12, 2, 4, 2, 4, false, 10000.0);
    let gqa = random_params(&c, 11);
    let tokens = random_tokens(&c, &mut Rng(5));
    let logits = reference::logits(&gqa, &tokens);
    let interleaved = reference::logits(&expand_kv(&gqa, |h| h / 2), &tokens);
    assert!(max_diff(&logits, &interleaved) < 1e-12);
    // The other convention (whole copies, h mod n_kv: spec section 11 item 8) is a different
    // model, so the check above does tell them apart.
    let tiled = reference::logits(&expand_kv(&gqa, |h| h % 2), &tokens);
    assert!(max_diff(&logits, &tiled) > 1e-3);
}

#[test]
fn attention_is_causal() {
    let c = config(8, 12, 2, 2, 1, 4, true, 10000.0);
    let params = random_params(&c, 3);
    let tokens = vec![1, 2, 3, 4, 5];
    let mut changed = tokens.clone();
    changed[3] = 9;
    let a = reference::logits(&params, &tokens);
    let b = reference::logits(&params, &changed);
    assert_eq!(a[..3], b[..3]);
    assert!(max_diff(&a[3..4], &b[3..4]) > 1e-6);
    assert!(max_diff(&a[4..], &b[4..]) > 1e-6);
}

#[test]
fn position_matters_through_rope() {
    // Without RoPE the last position's logits would not depend on the order of earlier tokens.
    let c = config(8, 12, 1, 2, 2, 4, true, 3.0);
    let params = random_params(&c, 4);
    let a = reference::logits(&params, &[1, 2, 3, 4, 5]);
    let b = reference::logits(&params, &[2, 1, 3, 4, 5]);
    assert!(max_diff(&a[4..], &b[4..]) > 1e-6);
}

#[test]
fn tied_gradient_is_the_sum_of_both_uses() {
    let tied_config = config(8, 12, 2, 2, 1, 4, true, 10000.0);
    let untied_config = ModelConfig {
        tied_embedding: false,
        qk_norm: false,
        ..tied_config.clone()
    };
    let tied = random_params(&tied_config, 21);
    let mut untied = Params::zeros(Arc::new(ParamLayout::new(&untied_config)));
    untied.data[..tied.data.len()].copy_from_slice(&tied.data);
    let (embed, cls) = (untied.layout.embed(), untied.layout.classifier());
    let copy = untied.get(embed.clone()).to_vec();
    untied.get_mut(cls.clone()).copy_from_slice(&copy);

    let mut rng = Rng(8);
    let tokens = random_tokens(&tied_config, &mut rng);
    let targets = random_tokens(&tied_config, &mut rng);
    let (lt, gt) = reference::loss_and_grads(&tied, &tokens, &targets);
    let (lu, gu) = reference::loss_and_grads(&untied, &tokens, &targets);
    assert!((lt - lu).abs() < 1e-14);
    for i in 0..tied.data.len() {
        let expect = if embed.contains(&i) {
            gu[i] + gu[cls.start + i - embed.start]
        } else {
            gu[i]
        };
        assert!((gt[i] - expect).abs() < 1e-14, "entry {i}");
    }
}

#[test]
fn zero_classifier_gives_uniform_loss() {
    let c = config(8, 12, 1, 2, 2, 4, false, 10000.0);
    let mut params = random_params(&c, 6);
    let cls = params.layout.classifier();
    params.get_mut(cls).fill(0.0);
    let loss = reference::loss(&params, &[0, 1, 2, 3, 4], &[5, 6, 7, 8, 9]);
    assert!((loss - (c.vocab as f64).ln()).abs() < 1e-14);
}

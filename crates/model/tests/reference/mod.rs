//! The independent reference model: the Llama-style decoder of the training issue, its mean
//! cross-entropy loss and the gradient of every parameter, written as plain f64 loops that share
//! no code with the production kernels (only the parameter layout, which is the contract).
//!
//! A test file uses it with `mod reference;`. The API:
//! - [`loss_and_grads`]`(params, tokens, targets) -> (loss, grads)`: the gradient vector is in the
//!   flat layout of `params.layout` (the same indices as `params.data`); with a tied classifier
//!   the embedding's gradient holds both of its uses;
//! - [`logits`]`(params, tokens) -> [S][V]`;
//! - [`loss`]`(params, tokens, targets)`;
//! - the same on an f64 weight vector (`*_f64`), which the finite-difference check perturbs.
//!
//! The model, position by position (x is one token's D-vector of the residual stream):
//! - x = embed[token];
//! - per layer: xn = rmsnorm(x, rms_att); q = Wq·xn, k = Wk·xn, v = Wv·xn; with `qk_norm`
//!   (Qwen3) each head of q and of k is replaced by rmsnorm(head, q_norm / k_norm); RoPE on q and k with
//!   llama2.c's interleaved pairs: pair i of each head, (v[2i], v[2i+1]), is rotated by
//!   θ = p·theta^(−2i/head_dim) at position p; query head h attends with key/value head
//!   h / (n_heads/n_kv_heads) (repeat-interleave, as Hugging Face does) over positions ≤ p, with
//!   scores scaled by 1/√head_dim and a softmax; x += Wo·(concatenated heads);
//!   then xn = rmsnorm(x, rms_ffn); x += W2·(silu(W1·xn) ⊙ W3·xn);
//! - logits = Wcls·rmsnorm(x, rms_final), Wcls the embedding when tied;
//! - loss = mean over positions of −ln softmax(logits)[target].
//!
//! rmsnorm(x, w) = x · (mean(x²) + eps)^(−1/2) · w, with eps from the configuration.
// Each test file uses a different part of the API.
#![allow(dead_code)]
// Index loops read like the formulas they implement (t over positions, s over keys).
#![allow(clippy::needless_range_loop)]

use anetrain_model::{LayerTensor, ModelConfig, ParamLayout, Params};

/// Mean cross-entropy and the gradient of every parameter, in the layout of `params`.
pub fn loss_and_grads(params: &Params, tokens: &[u32], targets: &[u32]) -> (f64, Vec<f64>) {
    loss_and_grads_f64(&params.layout, &widen(params), tokens, targets)
}

/// The logits of every position, [S][V].
pub fn logits(params: &Params, tokens: &[u32]) -> Vec<Vec<f64>> {
    logits_f64(&params.layout, &widen(params), tokens)
}

/// Mean cross-entropy only.
pub fn loss(params: &Params, tokens: &[u32], targets: &[u32]) -> f64 {
    loss_f64(&params.layout, &widen(params), tokens, targets)
}

pub fn widen(params: &Params) -> Vec<f64> {
    params.data.iter().map(|&v| v as f64).collect()
}

pub fn logits_f64(layout: &ParamLayout, w: &[f64], tokens: &[u32]) -> Vec<Vec<f64>> {
    forward(layout, w, tokens).logits
}

pub fn loss_f64(layout: &ParamLayout, w: &[f64], tokens: &[u32], targets: &[u32]) -> f64 {
    let fwd = forward(layout, w, tokens);
    cross_entropy(&fwd.logits, targets).0
}

pub fn loss_and_grads_f64(
    layout: &ParamLayout,
    w: &[f64],
    tokens: &[u32],
    targets: &[u32],
) -> (f64, Vec<f64>) {
    let c = &layout.config;
    assert_eq!(w.len(), layout.len);
    let fwd = forward(layout, w, tokens);
    let (loss, dlogits) = cross_entropy(&fwd.logits, targets);
    let mut g = vec![0.0; layout.len];

    // Classifier and final norm.
    let cls = layout.classifier();
    let mut dx: Vec<Vec<f64>> = (0..tokens.len())
        .map(|t| {
            outer_acc(&mut g[cls.clone()], c.vocab, c.dim, &dlogits[t], &fwd.xf[t]);
            let dxf = matvec_t(&w[cls.clone()], c.vocab, c.dim, &dlogits[t]);
            rmsnorm_back(
                &fwd.x_last[t],
                &w[layout.rms_final()],
                eps(c),
                &dxf,
                &mut g[layout.rms_final()],
            )
        })
        .collect();

    for l in (0..c.n_layers).rev() {
        dx = layer_back(layout, w, l, &fwd.layers[l], &dx, &mut g);
    }

    let embed = layout.embed();
    for (t, &tok) in tokens.iter().enumerate() {
        let row = embed.start + tok as usize * c.dim;
        for (gi, d) in g[row..row + c.dim].iter_mut().zip(&dx[t]) {
            *gi += d;
        }
    }
    (loss, g)
}

// ---------------------------------------------------------------------------------------------
// Forward.

/// What the backward pass needs from one layer, per position.
struct LayerCache {
    /// Layer input (the residual stream).
    x: Vec<Vec<f64>>,
    xn: Vec<Vec<f64>>,
    /// q and k after RoPE.
    q: Vec<Vec<f64>>,
    k: Vec<Vec<f64>>,
    /// q and k as projected, before the per-head norms (`qk_norm` only).
    qf: Vec<Vec<f64>>,
    kf: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    /// probs[h][t][s] for s ≤ t.
    probs: Vec<Vec<Vec<f64>>>,
    /// Concatenated attention outputs, [S][Q_DIM].
    o: Vec<Vec<f64>>,
    /// Residual stream after attention.
    x2: Vec<Vec<f64>>,
    xn2: Vec<Vec<f64>>,
    h1: Vec<Vec<f64>>,
    h3: Vec<Vec<f64>>,
    /// silu(h1) ⊙ h3.
    gate: Vec<Vec<f64>>,
}

struct Forward {
    layers: Vec<LayerCache>,
    /// Residual stream after the last layer.
    x_last: Vec<Vec<f64>>,
    /// After the final norm.
    xf: Vec<Vec<f64>>,
    logits: Vec<Vec<f64>>,
}

fn eps(c: &ModelConfig) -> f64 {
    c.norm_eps as f64
}

fn forward(layout: &ParamLayout, w: &[f64], tokens: &[u32]) -> Forward {
    let c = &layout.config;
    let embed = &w[layout.embed()];
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| {
            let tok = tok as usize;
            assert!(tok < c.vocab, "token {tok} outside the vocabulary");
            embed[tok * c.dim..(tok + 1) * c.dim].to_vec()
        })
        .collect();
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let cache = layer_forward(layout, w, l, x);
        x = next_residual(c, w, layout, l, &cache);
        layers.push(cache);
    }
    let xf: Vec<Vec<f64>> = x
        .iter()
        .map(|xt| rmsnorm(xt, &w[layout.rms_final()], eps(c)))
        .collect();
    let cls = &w[layout.classifier()];
    let logits = xf.iter().map(|v| matvec(cls, c.vocab, c.dim, v)).collect();
    Forward {
        layers,
        x_last: x,
        xf,
        logits,
    }
}

/// Attention half and the FFN's inputs of layer `l` on the residual stream `x`.
fn layer_forward(layout: &ParamLayout, w: &[f64], l: usize, x: Vec<Vec<f64>>) -> LayerCache {
    let c = &layout.config;
    let p = |t: LayerTensor| &w[layout.layer(l, t)];
    let s_len = x.len();
    let xn: Vec<Vec<f64>> = x
        .iter()
        .map(|xt| rmsnorm(xt, p(LayerTensor::RmsAtt), eps(c)))
        .collect();
    let mut q = Vec::with_capacity(s_len);
    let mut k = Vec::with_capacity(s_len);
    let mut v = Vec::with_capacity(s_len);
    let (mut qf, mut kf) = (Vec::new(), Vec::new());
    for (pos, xt) in xn.iter().enumerate() {
        let mut qt = matvec(p(LayerTensor::Wq), c.q_dim(), c.dim, xt);
        let mut kt = matvec(p(LayerTensor::Wk), c.kv_dim(), c.dim, xt);
        if c.qk_norm {
            qf.push(qt.clone());
            kf.push(kt.clone());
            qt = head_norms(&qt, p(LayerTensor::QNorm), eps(c));
            kt = head_norms(&kt, p(LayerTensor::KNorm), eps(c));
        }
        rope(&mut qt, c.head_dim, pos, c.rope_theta as f64, 1.0);
        rope(&mut kt, c.head_dim, pos, c.rope_theta as f64, 1.0);
        q.push(qt);
        k.push(kt);
        v.push(matvec(p(LayerTensor::Wv), c.kv_dim(), c.dim, xt));
    }

    let hd = c.head_dim;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut probs = vec![Vec::with_capacity(s_len); c.n_heads];
    let mut o = vec![vec![0.0; c.q_dim()]; s_len];
    for (h, probs_h) in probs.iter_mut().enumerate() {
        let kvh = kv_head(c, h);
        for t in 0..s_len {
            let qh = &q[t][h * hd..(h + 1) * hd];
            let scores: Vec<f64> = (0..=t)
                .map(|s| scale * dot(qh, &k[s][kvh * hd..(kvh + 1) * hd]))
                .collect();
            let pr = softmax(&scores);
            for (s, &ps) in pr.iter().enumerate() {
                for d in 0..hd {
                    o[t][h * hd + d] += ps * v[s][kvh * hd + d];
                }
            }
            probs_h.push(pr);
        }
    }

    let x2: Vec<Vec<f64>> = x
        .iter()
        .zip(&o)
        .map(|(xt, ot)| add(xt, &matvec(p(LayerTensor::Wo), c.dim, c.q_dim(), ot)))
        .collect();
    let xn2: Vec<Vec<f64>> = x2
        .iter()
        .map(|xt| rmsnorm(xt, p(LayerTensor::RmsFfn), eps(c)))
        .collect();
    let h1: Vec<Vec<f64>> = xn2
        .iter()
        .map(|xt| matvec(p(LayerTensor::W1), c.hidden, c.dim, xt))
        .collect();
    let h3: Vec<Vec<f64>> = xn2
        .iter()
        .map(|xt| matvec(p(LayerTensor::W3), c.hidden, c.dim, xt))
        .collect();
    let gate = h1
        .iter()
        .zip(&h3)
        .map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| silu(a) * b).collect())
        .collect();
    LayerCache {
        x,
        xn,
        q,
        k,
        qf,
        kf,
        v,
        probs,
        o,
        x2,
        xn2,
        h1,
        h3,
        gate,
    }
}

/// The layer's output: x2 + W2·gate.
fn next_residual(
    c: &ModelConfig,
    w: &[f64],
    layout: &ParamLayout,
    l: usize,
    cache: &LayerCache,
) -> Vec<Vec<f64>> {
    let w2 = &w[layout.layer(l, LayerTensor::W2)];
    cache
        .x2
        .iter()
        .zip(&cache.gate)
        .map(|(x2, g)| add(x2, &matvec(w2, c.dim, c.hidden, g)))
        .collect()
}

/// The key/value head that query head `h` attends with: repeat-interleave, so consecutive query
/// heads share one key/value head.
pub fn kv_head(c: &ModelConfig, h: usize) -> usize {
    h / (c.n_heads / c.n_kv_heads)
}

/// Mean cross-entropy over the positions whose target is not `u32::MAX` (ignored), and its
/// gradient with respect to the logits.
fn cross_entropy(logits: &[Vec<f64>], targets: &[u32]) -> (f64, Vec<Vec<f64>>) {
    assert_eq!(logits.len(), targets.len());
    let n = targets.iter().filter(|&&t| t != u32::MAX).count().max(1) as f64;
    let mut loss = 0.0;
    let dlogits = logits
        .iter()
        .zip(targets)
        .map(|(lt, &target)| {
            if target == u32::MAX {
                return vec![0.0; lt.len()];
            }
            let target = target as usize;
            assert!(target < lt.len(), "target {target} outside the vocabulary");
            // −ln softmax = logsumexp − logit, computed without forming a tiny probability.
            let m = lt.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + lt.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            loss += (lse - lt[target]) / n;
            let mut p = softmax(lt);
            p[target] -= 1.0;
            p.iter().map(|v| v / n).collect()
        })
        .collect();
    (loss, dlogits)
}

// ---------------------------------------------------------------------------------------------
// Backward.

/// Given dL/d(layer output) per position, accumulates the layer's weight gradients into `g` and
/// returns dL/d(layer input).
fn layer_back(
    layout: &ParamLayout,
    w: &[f64],
    l: usize,
    cache: &LayerCache,
    dout: &[Vec<f64>],
    g: &mut [f64],
) -> Vec<Vec<f64>> {
    let c = &layout.config;
    let r = |t: LayerTensor| layout.layer(l, t);
    let s_len = dout.len();

    // FFN: out = x2 + W2·(silu(h1) ⊙ h3), h1 = W1·xn2, h3 = W3·xn2, xn2 = rmsnorm(x2).
    let mut dx2 = Vec::with_capacity(s_len);
    for t in 0..s_len {
        let df = &dout[t];
        outer_acc(
            &mut g[r(LayerTensor::W2)],
            c.dim,
            c.hidden,
            df,
            &cache.gate[t],
        );
        let dgate = matvec_t(&w[r(LayerTensor::W2)], c.dim, c.hidden, df);
        let (mut dh1, mut dh3) = (vec![0.0; c.hidden], vec![0.0; c.hidden]);
        for j in 0..c.hidden {
            let a = cache.h1[t][j];
            let sig = sigmoid(a);
            dh3[j] = dgate[j] * a * sig;
            // d silu(a)/da = σ(a) + a·σ(a)·(1 − σ(a)).
            dh1[j] = dgate[j] * cache.h3[t][j] * sig * (1.0 + a * (1.0 - sig));
        }
        outer_acc(
            &mut g[r(LayerTensor::W1)],
            c.hidden,
            c.dim,
            &dh1,
            &cache.xn2[t],
        );
        outer_acc(
            &mut g[r(LayerTensor::W3)],
            c.hidden,
            c.dim,
            &dh3,
            &cache.xn2[t],
        );
        let dxn2 = add(
            &matvec_t(&w[r(LayerTensor::W1)], c.hidden, c.dim, &dh1),
            &matvec_t(&w[r(LayerTensor::W3)], c.hidden, c.dim, &dh3),
        );
        let through_norm = rmsnorm_back(
            &cache.x2[t],
            &w[r(LayerTensor::RmsFfn)],
            eps(c),
            &dxn2,
            &mut g[r(LayerTensor::RmsFfn)],
        );
        dx2.push(add(df, &through_norm));
    }

    // Attention output projection: x2 = x + Wo·o.
    let mut d_o = Vec::with_capacity(s_len);
    for t in 0..s_len {
        outer_acc(
            &mut g[r(LayerTensor::Wo)],
            c.dim,
            c.q_dim(),
            &dx2[t],
            &cache.o[t],
        );
        d_o.push(matvec_t(&w[r(LayerTensor::Wo)], c.dim, c.q_dim(), &dx2[t]));
    }

    // Softmax attention, per query head, into gradients of rotated q, rotated k and v.
    let hd = c.head_dim;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut dq = vec![vec![0.0; c.q_dim()]; s_len];
    let mut dk = vec![vec![0.0; c.kv_dim()]; s_len];
    let mut dv = vec![vec![0.0; c.kv_dim()]; s_len];
    for h in 0..c.n_heads {
        let kvh = kv_head(c, h);
        let (qs, ks) = (h * hd..(h + 1) * hd, kvh * hd..(kvh + 1) * hd);
        for t in 0..s_len {
            let p = &cache.probs[h][t];
            let doh = &d_o[t][qs.clone()];
            let dp: Vec<f64> = (0..=t).map(|s| dot(doh, &cache.v[s][ks.clone()])).collect();
            let p_dot_dp = dot(p, &dp);
            for s in 0..=t {
                for d in 0..hd {
                    dv[s][kvh * hd + d] += p[s] * doh[d];
                }
                // Softmax backward: d score_s = p_s · (dp_s − Σ_u p_u dp_u).
                let dscore = p[s] * (dp[s] - p_dot_dp) * scale;
                for d in 0..hd {
                    dq[t][h * hd + d] += dscore * cache.k[s][kvh * hd + d];
                    dk[s][kvh * hd + d] += dscore * cache.q[t][h * hd + d];
                }
            }
        }
    }

    // RoPE is a rotation, so its backward is the rotation by −θ; then the projections.
    let mut dx = Vec::with_capacity(s_len);
    for t in 0..s_len {
        rope(&mut dq[t], hd, t, c.rope_theta as f64, -1.0);
        rope(&mut dk[t], hd, t, c.rope_theta as f64, -1.0);
        if c.qk_norm {
            dq[t] = head_norms_back(&cache.qf[t], w, r(LayerTensor::QNorm), c, &dq[t], g);
            dk[t] = head_norms_back(&cache.kf[t], w, r(LayerTensor::KNorm), c, &dk[t], g);
        }
        let xn = &cache.xn[t];
        outer_acc(&mut g[r(LayerTensor::Wq)], c.q_dim(), c.dim, &dq[t], xn);
        outer_acc(&mut g[r(LayerTensor::Wk)], c.kv_dim(), c.dim, &dk[t], xn);
        outer_acc(&mut g[r(LayerTensor::Wv)], c.kv_dim(), c.dim, &dv[t], xn);
        let mut dxn = matvec_t(&w[r(LayerTensor::Wq)], c.q_dim(), c.dim, &dq[t]);
        dxn = add(
            &dxn,
            &matvec_t(&w[r(LayerTensor::Wk)], c.kv_dim(), c.dim, &dk[t]),
        );
        dxn = add(
            &dxn,
            &matvec_t(&w[r(LayerTensor::Wv)], c.kv_dim(), c.dim, &dv[t]),
        );
        let through_norm = rmsnorm_back(
            &cache.x[t],
            &w[r(LayerTensor::RmsAtt)],
            eps(c),
            &dxn,
            &mut g[r(LayerTensor::RmsAtt)],
        );
        dx.push(add(&dx2[t], &through_norm));
    }
    dx
}

// ---------------------------------------------------------------------------------------------
// Small pieces.

/// Rotates each interleaved pair (v[2i], v[2i+1]) of each head of `v` by sign·θ_i, with
/// θ_i = pos·theta^(−2i/head_dim).
pub fn rope(v: &mut [f64], head_dim: usize, pos: usize, theta: f64, sign: f64) {
    for head in v.chunks_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let angle = sign * pos as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
            let (sin, cos) = angle.sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos - b * sin;
            head[2 * i + 1] = a * sin + b * cos;
        }
    }
}

/// rmsnorm of each head (`w.len()` values) of `x`, with the one weight `w`.
fn head_norms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(w.len()).flat_map(|h| rmsnorm(h, w, eps)).collect()
}

/// The backward of [`head_norms`] of `x` with the weight at `range` of `w`: returns the
/// gradient at `x` and accumulates the weight's, summed over the heads, into `g`.
fn head_norms_back(
    x: &[f64],
    w: &[f64],
    range: std::ops::Range<usize>,
    c: &ModelConfig,
    dy: &[f64],
    g: &mut [f64],
) -> Vec<f64> {
    let hd = range.len();
    x.chunks(hd)
        .zip(dy.chunks(hd))
        .flat_map(|(xh, dyh)| {
            rmsnorm_back(xh, &w[range.clone()], eps(c), dyh, &mut g[range.clone()])
        })
        .collect()
}

pub fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let r = inv_rms(x, eps);
    x.iter().zip(w).map(|(xi, wi)| xi * r * wi).collect()
}

fn inv_rms(x: &[f64], eps: f64) -> f64 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    1.0 / (mean_sq + eps).sqrt()
}

/// y = x·r·w with r = (mean(x²) + eps)^(−1/2): accumulates dw and returns dx, using
/// dr/dx_j = −r³·x_j / D.
fn rmsnorm_back(x: &[f64], w: &[f64], eps: f64, dy: &[f64], dw: &mut [f64]) -> Vec<f64> {
    let r = inv_rms(x, eps);
    let n = x.len() as f64;
    let mut weighted = 0.0;
    for j in 0..x.len() {
        dw[j] += dy[j] * x[j] * r;
        weighted += dy[j] * w[j] * x[j];
    }
    (0..x.len())
        .map(|j| dy[j] * w[j] * r - x[j] * r * r * r * weighted / n)
        .collect()
}

pub fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

fn sigmoid(a: f64) -> f64 {
    1.0 / (1.0 + (-a).exp())
}

fn silu(a: f64) -> f64 {
    a * sigmoid(a)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// y = W·x for W [rows][cols] row-major.
fn matvec(w: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    assert_eq!(w.len(), rows * cols);
    (0..rows)
        .map(|r| dot(&w[r * cols..(r + 1) * cols], x))
        .collect()
}

/// dx = Wᵀ·dy for W [rows][cols] row-major.
fn matvec_t(w: &[f64], rows: usize, cols: usize, dy: &[f64]) -> Vec<f64> {
    assert_eq!(w.len(), rows * cols);
    let mut dx = vec![0.0; cols];
    for (r, &d) in dy.iter().enumerate() {
        for (c, x) in dx.iter_mut().enumerate() {
            *x += w[r * cols + c] * d;
        }
    }
    dx
}

/// dW += dy ⊗ x.
fn outer_acc(dw: &mut [f64], rows: usize, cols: usize, dy: &[f64], x: &[f64]) {
    assert_eq!(dw.len(), rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            dw[r * cols + c] += dy[r] * x[c];
        }
    }
}

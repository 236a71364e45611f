//! The math that stays on the host: embedding, RMSNorm where the host needs it, the classifier
//! and cross-entropy, and weight-gradient products. Activations are channel-first `[C][S]`.

use anetrain_device::host_math::{exp, vectorised, HostMath, MatLayout};
use rayon::prelude::*;

/// `x[d][t]` = `embed[token_t][d]`.
pub fn embed_forward(embed: &[f32], dim: usize, tokens: &[u32], x: &mut [f32]) {
    let s = tokens.len();
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &embed[tok as usize * dim..(tok as usize + 1) * dim];
        for (d, &v) in row.iter().enumerate() {
            x[d * s + t] = v;
        }
    }
}

/// `dembed[token_t][d]` += `dx[d][t]`.
pub fn embed_backward(dembed: &mut [f32], dim: usize, tokens: &[u32], dx: &[f32]) {
    let s = tokens.len();
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &mut dembed[tok as usize * dim..(tok as usize + 1) * dim];
        for (d, g) in row.iter_mut().enumerate() {
            *g += dx[d * s + t];
        }
    }
}

/// out = x · (mean_c x² + eps)^(−1/2) · w, per position; returns the reciprocal RMS per
/// position for the backward.
pub fn rmsnorm_forward(x: &[f32], w: &[f32], eps: f32, s: usize, out: &mut [f32]) -> Vec<f32> {
    let d = w.len();
    let mut ms = vec![0.0f64; s];
    for c in 0..d {
        for (m, &v) in ms.iter_mut().zip(&x[c * s..(c + 1) * s]) {
            *m += (v as f64) * (v as f64);
        }
    }
    let rrms: Vec<f32> = ms
        .iter()
        .map(|&m| (1.0 / (m / d as f64 + eps as f64).sqrt()) as f32)
        .collect();
    for c in 0..d {
        for t in 0..s {
            out[c * s + t] = x[c * s + t] * rrms[t] * w[c];
        }
    }
    rrms
}

/// Backward of [`rmsnorm_forward`]: writes dx, accumulates dw.
///
/// With r = rrms and dot_t = Σ_c dy·w·x: dx = r·(dy·w − x·r²·dot/D), dw_c += Σ_t dy·x·r.
pub fn rmsnorm_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rrms: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let (d, s) = (w.len(), rrms.len());
    let mut dot = vec![0.0f64; s];
    for c in 0..d {
        for t in 0..s {
            dot[t] += (dy[c * s + t] * w[c] * x[c * s + t]) as f64;
        }
    }
    let coeff: Vec<f32> = (0..s)
        .map(|t| (dot[t] * (rrms[t] as f64).powi(2) / d as f64) as f32)
        .collect();
    for c in 0..d {
        let mut acc = 0.0f64;
        for t in 0..s {
            let i = c * s + t;
            dx[i] = rrms[t] * (dy[i] * w[c] - x[i] * coeff[t]);
            acc += (dy[i] * x[i] * rrms[t]) as f64;
        }
        dw[c] += acc as f32;
    }
}

/// The gradient at the input `x` of a pre-norm block: [`rmsnorm_backward`] of `dnorm`, the
/// gradient at the norm's output (the norm weight's gradient accumulated into `dw`), plus
/// `dres`, the gradient the residual path carries past the block.
pub fn prenorm_backward(
    dx: &mut [f32],
    dnorm: &[f32],
    x: &[f32],
    w: &[f32],
    eps: f32,
    dres: &[f32],
    dw: &mut [f32],
) {
    let (d, s) = (w.len(), x.len() / w.len().max(1));
    let rrms = rrms(x, d, s, eps);
    rmsnorm_backward(dnorm, x, w, &rrms, dx, dw);
    for (dx, r) in dx.iter_mut().zip(dres) {
        *dx += r;
    }
}

/// Adds to `dw` `[hd]` the gradient of a per-head norm's weight from `dyx` `[heads·hd][S]`,
/// the output gradient times the normalised input: its sum over heads and positions.
pub fn head_norm_weight_grad(dw: &mut [f32], dyx: &[f32], s: usize) {
    let hd = dw.len();
    for (row, values) in dyx.chunks_exact(s).enumerate() {
        dw[row % hd] += values.iter().sum::<f32>();
    }
}

/// The reciprocal RMS of every position (the forward's, recomputed for a backward).
pub fn rrms(x: &[f32], d: usize, s: usize, eps: f32) -> Vec<f32> {
    let mut ms = vec![0.0f64; s];
    for c in 0..d {
        for (m, &v) in ms.iter_mut().zip(&x[c * s..(c + 1) * s]) {
            *m += (v as f64) * (v as f64);
        }
    }
    ms.iter()
        .map(|&m| (1.0 / (m / d as f64 + eps as f64).sqrt()) as f32)
        .collect()
}

/// `y[m][s]` = `a[m][k]` · `x[k][s]` (`a` row-major, `x` channel-first).
pub fn matmul(a: &[f32], x: &[f32], m: usize, k: usize, s: usize, y: &mut [f32], host: HostMath) {
    host.gemm(
        m,
        s,
        k,
        a,
        MatLayout::row_major(0, k),
        x,
        MatLayout::row_major(0, s),
        y,
        MatLayout::row_major(0, s),
        false,
        1.0,
    );
}

/// `y[k][s]` = aᵀ · x, with `a` `[m][k]` row-major and `x` `[m][s]`.
pub fn matmul_t(a: &[f32], x: &[f32], m: usize, k: usize, s: usize, y: &mut [f32], host: HostMath) {
    host.gemm(
        k,
        s,
        m,
        a,
        MatLayout::row_major(0, k).transposed(),
        x,
        MatLayout::row_major(0, s),
        y,
        MatLayout::row_major(0, s),
        false,
        1.0,
    );
}

/// A weight gradient: `dw[out][in]` += `dy[out][S]` · `x[in][S]`ᵀ.
pub fn weight_grad(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    out: usize,
    inp: usize,
    s: usize,
    host: HostMath,
) {
    host.gemm(
        out,
        inp,
        s,
        dy,
        MatLayout::row_major(0, s),
        x,
        MatLayout::row_major(0, s).transposed(),
        dw,
        MatLayout::row_major(0, inp),
        true,
        1.0,
    );
}

/// The mean cross-entropy of a window and its gradient, left unnormalised.
///
/// Normalising the gradient would cost two more passes over the `[V][S]` logits (32 MB for a
/// 32 000-word vocabulary); instead `dlogits[v][t] · column[t]` is the gradient of
/// `scale ·` loss, and the products that read `dlogits` fold `column` into their small
/// operand or result.
pub struct CrossEntropy {
    pub loss: f32,
    pub column: Vec<f32>,
}

/// A target that is not trained on: a prompt token, padding, or the first token of a packed
/// example. Its position adds nothing to the loss or the gradient.
pub const IGNORED_TARGET: u32 = u32::MAX;

/// Cross-entropy over positions of `logits` `[V][S]` at `targets` (each below V, or
/// [`IGNORED_TARGET`]: the caller's data validation checks), averaged over the positions that
/// are targets, with `dlogits` as [`CrossEntropy`] describes: softmax numerators exp(logit −
/// max) with the target's share taken off. An ignored position's column is 0, so nothing of it
/// reaches the gradient; with no target at all the loss is 0.
///
/// Rows of the vocabulary are split across the threads, each row contiguous over positions,
/// so that the layout is streamed rather than strided. Partial maxima and sums are combined in
/// a fixed order: the result does not depend on the split.
pub fn cross_entropy(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> CrossEntropy {
    let s = targets.len();
    let rows = ROWS_PER_TASK * s;
    let logits = &logits[..v * s];
    let dlogits = &mut dlogits[..v * s];
    let max = logits
        .par_chunks(rows)
        .map(|chunk| {
            vectorised(
                #[inline(always)]
                || column_max(chunk, s),
            )
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| x.max(*y)).collect())
        .unwrap_or_else(|| vec![0.0; s]);
    let partial_sums: Vec<Vec<f32>> = logits
        .par_chunks(rows)
        .zip(dlogits.par_chunks_mut(rows))
        .map(|(chunk, out)| {
            vectorised(
                #[inline(always)]
                || shifted_exp(chunk, &max, out),
            )
        })
        .collect();
    let mut sum = vec![0.0f32; s];
    for partial in &partial_sums {
        for (z, p) in sum.iter_mut().zip(partial) {
            *z += p;
        }
    }
    let mut loss = 0.0f64;
    let counted = targets.iter().filter(|&&t| t != IGNORED_TARGET).count();
    for (t, &target) in targets.iter().enumerate() {
        if target == IGNORED_TARGET {
            continue;
        }
        let i = target as usize * s + t;
        let p = dlogits[i] as f64 / sum[t] as f64;
        loss -= p.max(1e-30).ln();
        // (e/z − 1)·column = (e − z)/z·column: the one-hot comes off before normalising.
        dlogits[i] -= sum[t];
    }
    let column = sum
        .iter()
        .zip(targets)
        .map(|(z, &target)| match target {
            IGNORED_TARGET => 0.0,
            _ => scale / (z * counted as f32),
        })
        .collect();
    CrossEntropy {
        loss: (loss / counted.max(1) as f64) as f32,
        column,
    }
}

/// Vocabulary rows per parallel task of the cross-entropy.
const ROWS_PER_TASK: usize = 1024;

// The two passes of `cross_entropy` over its rows of logits, as functions that
// `vectorised`'s closures only call: a closure holding the loops itself is not inlined into
// the wide copy.

/// The largest logit of each position (column) over `chunk`'s rows of `s`.
#[inline(always)]
fn column_max(chunk: &[f32], s: usize) -> Vec<f32> {
    let mut max = vec![f32::NEG_INFINITY; s];
    for row in chunk.chunks_exact(s) {
        for (m, &x) in max.iter_mut().zip(row) {
            *m = m.max(x);
        }
    }
    max
}

/// out = exp(logit − max of its column) over `chunk`'s rows; returns each column's sum.
#[inline(always)]
fn shifted_exp(chunk: &[f32], max: &[f32], out: &mut [f32]) -> Vec<f32> {
    let s = max.len();
    let mut sum = vec![0.0f32; s];
    for (row, out) in chunk.chunks_exact(s).zip(out.chunks_exact_mut(s)) {
        for (((o, &x), m), z) in out.iter_mut().zip(row).zip(max).zip(sum.iter_mut()) {
            *o = exp(x - m);
            *z += *o;
        }
    }
    sum
}

/// Multiplies column `t` of `m` (rows of `column.len()`) by `column[t]`.
pub fn scale_columns(m: &mut [f32], column: &[f32]) {
    for row in m.chunks_exact_mut(column.len()) {
        for (x, c) in row.iter_mut().zip(column) {
            *x *= c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let (d, s) = (5, 3);
        let x: Vec<f32> = (0..d * s)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.25).collect();
        let dy: Vec<f32> = (0..d * s)
            .map(|i| ((i * 5 % 7) as f32 - 3.0) / 4.0)
            .collect();
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            let mut out = vec![0.0; d * s];
            rmsnorm_forward(x, w, 1e-5, s, &mut out);
            out.iter()
                .zip(&dy)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let mut out = vec![0.0; d * s];
        let r = rmsnorm_forward(&x, &w, 1e-5, s, &mut out);
        let mut dx = vec![0.0; d * s];
        let mut dw = vec![0.0; d];
        rmsnorm_backward(&dy, &x, &w, &r, &mut dx, &mut dw);
        let h = 1e-3;
        for i in 0..d * s {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (loss(&xp, &w) - loss(&xm, &w)) / (2.0 * h as f64);
            assert!(
                (fd - dx[i] as f64).abs() < 1e-3,
                "dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }
        for c in 0..d {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[c] += h;
            wm[c] -= h;
            let fd = (loss(&x, &wp) - loss(&x, &wm)) / (2.0 * h as f64);
            assert!(
                (fd - dw[c] as f64).abs() < 1e-3,
                "dw[{c}]: {fd} vs {}",
                dw[c]
            );
        }
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_v() {
        let (v, s) = (8, 3);
        let logits = vec![0.25; v * s];
        let mut d = vec![0.0; v * s];
        let ce = cross_entropy(&logits, &[1, 7, 0], v, 1.0, &mut d);
        assert!((ce.loss - (v as f32).ln()).abs() < 1e-6);
        scale_columns(&mut d, &ce.column);
        // dlogits = (1/V − onehot)/S
        assert!((d[s] - (1.0 / 8.0 - 1.0) / 3.0).abs() < 1e-7);
        assert!((d[0] - (1.0 / 8.0) / 3.0).abs() < 1e-7);
    }

    /// Against softmax − one-hot computed plainly in f64, on a vocabulary that spans several
    /// parallel tasks, with a loss scale.
    #[test]
    fn cross_entropy_matches_a_plain_f64_softmax() {
        let (v, s, scale) = (2 * ROWS_PER_TASK + 37, 5, 8.0f32);
        let logits: Vec<f32> = (0..v * s)
            .map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.5) * 12.0)
            .collect();
        let targets = [0u32, 5, 1024, 2048, (v - 1) as u32];
        let mut d = vec![0.0; v * s];
        let ce = cross_entropy(&logits, &targets, v, scale, &mut d);
        scale_columns(&mut d, &ce.column);
        let mut loss = 0.0f64;
        for t in 0..s {
            let col: Vec<f64> = (0..v).map(|r| logits[r * s + t] as f64).collect();
            let max = col.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = col.iter().map(|x| (x - max).exp()).sum();
            loss -= (col[targets[t] as usize] - max) - z.ln();
            for r in 0..v {
                let onehot = if r == targets[t] as usize { 1.0 } else { 0.0 };
                let want = ((col[r] - max).exp() / z - onehot) * scale as f64 / s as f64;
                let got = d[r * s + t] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs() + 1e-9,
                    "({r}, {t}): {got} vs {want}"
                );
            }
        }
        assert!(
            (ce.loss as f64 - loss / s as f64).abs() < 1e-5,
            "{} vs {}",
            ce.loss,
            loss / s as f64
        );
    }
}

//! The math that stays on the host: embedding, RMSNorm where the host needs it, the classifier
//! and cross-entropy, and weight-gradient products. Activations are channel-first `[C][S]`.

use anetrain_device::cpu::{gemm, MatLayout};

/// x[d][t] = embed[token_t][d].
pub fn embed_forward(embed: &[f32], dim: usize, tokens: &[u32], x: &mut [f32]) {
    let s = tokens.len();
    for (t, &tok) in tokens.iter().enumerate() {
        let row = &embed[tok as usize * dim..(tok as usize + 1) * dim];
        for (d, &v) in row.iter().enumerate() {
            x[d * s + t] = v;
        }
    }
}

/// dembed[token_t][d] += dx[d][t].
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

/// y[m][s] = a[m][k] · x[k][s] (`a` row-major, `x` channel-first).
pub fn matmul(a: &[f32], x: &[f32], m: usize, k: usize, s: usize, y: &mut [f32], threads: usize) {
    gemm(
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
        threads,
    );
}

/// y[k][s] = aᵀ · x, with `a` [m][k] row-major and `x` [m][s].
pub fn matmul_t(a: &[f32], x: &[f32], m: usize, k: usize, s: usize, y: &mut [f32], threads: usize) {
    gemm(
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
        threads,
    );
}

/// A weight gradient: dw[out][in] += dy[out][S] · x[in][S]ᵀ.
pub fn weight_grad(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    out: usize,
    inp: usize,
    s: usize,
    threads: usize,
) {
    gemm(
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
        threads,
    );
}

/// Mean cross-entropy over positions of `logits` [V][S]; writes dlogits = (softmax − onehot)/S.
/// Targets must be below V (checked by the caller's data validation).
///
/// Works row by row over the vocabulary (each row contiguous over positions), so that the
/// [V][S] layout is streamed rather than strided: with V = 32000 the column walk thrashed.
pub fn cross_entropy(logits: &[f32], targets: &[u32], v: usize, dlogits: &mut [f32]) -> f32 {
    let s = targets.len();
    let mut max = vec![f32::NEG_INFINITY; s];
    for row in logits.chunks_exact(s).take(v) {
        for (m, &x) in max.iter_mut().zip(row) {
            *m = m.max(x);
        }
    }
    let mut sum = vec![0.0f32; s];
    for (row, out) in logits
        .chunks_exact(s)
        .zip(dlogits.chunks_exact_mut(s))
        .take(v)
    {
        for (((o, &x), m), z) in out.iter_mut().zip(row).zip(&max).zip(sum.iter_mut()) {
            *o = (x - m).exp();
            *z += *o;
        }
    }
    let scale: Vec<f32> = sum.iter().map(|z| 1.0 / (z * s as f32)).collect();
    for out in dlogits.chunks_exact_mut(s).take(v) {
        for (o, k) in out.iter_mut().zip(&scale) {
            *o *= k;
        }
    }
    let mut loss = 0.0f64;
    for (t, &target) in targets.iter().enumerate() {
        let i = target as usize * s + t;
        // dlogits holds p/S here; the loss needs p itself.
        let p = dlogits[i] as f64 * s as f64;
        loss -= p.max(1e-30).ln();
        dlogits[i] -= 1.0 / s as f32;
    }
    (loss / s as f64) as f32
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
        let loss = cross_entropy(&logits, &[1, 7, 0], v, &mut d);
        assert!((loss - (v as f32).ln()).abs() < 1e-6);
        // dlogits = (1/V − onehot)/S
        assert!((d[s] - (1.0 / 8.0 - 1.0) / 3.0).abs() < 1e-7);
        assert!((d[0] - (1.0 / 8.0) / 3.0).abs() < 1e-7);
    }
}

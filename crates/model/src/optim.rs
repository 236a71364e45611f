//! The optimizer side of training: AdamW, global-norm clipping, the learning-rate schedule and
//! dynamic loss scaling for fp16.

use crate::params::Params;
use anetrain_device::host_math::vectorised;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// AdamW hyperparameters. Weight decay applies to matrices only (the layout's `decay` flag).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// First and second moments, and the number of updates taken.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub m: Params,
    pub v: Params,
    pub t: u64,
}

impl AdamState {
    pub fn new(like: &Params) -> AdamState {
        AdamState {
            m: Params::zeros(like.layout.clone()),
            v: Params::zeros(like.layout.clone()),
            t: 0,
        }
    }
}

impl AdamW {
    /// One update of `params` with gradient `grads` at learning rate `lr`:
    /// w −= lr·(m̂/(√v̂ + eps) + wd·w), with bias-corrected moments.
    pub fn update(&self, params: &mut Params, grads: &Params, state: &mut AdamState, lr: f32) {
        self.update_scaled(params, grads, 1.0, state, lr);
    }

    /// [`AdamW::update`] with the gradient `grad_scale · grads`: unscaling and clipping ride
    /// into the update instead of costing a pass each over every gradient (the optimizer is
    /// bound by memory bandwidth).
    pub fn update_scaled(
        &self,
        params: &mut Params,
        grads: &Params,
        grad_scale: f32,
        state: &mut AdamState,
        lr: f32,
    ) {
        self.update_scaled_impl(None, params, grads, grad_scale, state, lr);
    }

    /// [`AdamW::update_scaled`] of `from`, written into `to` (whose values are overwritten).
    /// When the current weights must stay as they are (a kernel set compiled from them is
    /// still running), this is the update and the copy in one pass: read the old weights,
    /// write the new ones, where a copy first would read and write every weight twice.
    pub fn update_scaled_from(
        &self,
        from: &Params,
        to: &mut Params,
        grads: &Params,
        grad_scale: f32,
        state: &mut AdamState,
        lr: f32,
    ) {
        assert_eq!(from.data.len(), to.data.len(), "update into another layout");
        self.update_scaled_impl(Some(from), to, grads, grad_scale, state, lr);
    }

    fn update_scaled_impl(
        &self,
        from: Option<&Params>,
        params: &mut Params,
        grads: &Params,
        grad_scale: f32,
        state: &mut AdamState,
        lr: f32,
    ) {
        state.t += 1;
        let rules = self.rules(params, state.t, lr);
        // Memory-bound: chunks spread the pass over the cores, and the plain zipped loop
        // inside each vectorises (sqrt and division included).
        let chunks = params
            .data
            .par_chunks_mut(PARALLEL_CHUNK)
            .zip(state.m.data.par_chunks_mut(PARALLEL_CHUNK))
            .zip(state.v.data.par_chunks_mut(PARALLEL_CHUNK))
            .zip(grads.data.par_chunks(PARALLEL_CHUNK))
            .enumerate();
        chunks.for_each(|(i, (((w, m), v), g))| {
            for (at, local, rule) in parts(&rules, i, w.len()) {
                let old = from.map(|from| &from.data[at]);
                vectorised(
                    #[inline(always)]
                    || {
                        rule.update(
                            &mut w[local.clone()],
                            old,
                            &mut m[local.clone()],
                            &mut v[local.clone()],
                            &g[local.clone()],
                            grad_scale,
                        )
                    },
                );
            }
        });
    }
}

/// Elements per parallel task of passes over every parameter: large enough to amortise
/// scheduling, small enough that `tiny`'s million parameters split across the cores.
pub const PARALLEL_CHUNK: usize = 1 << 16;

/// The tensors' parts of chunk `index` (`len` elements) of a [`PARALLEL_CHUNK`]-chunked pass
/// over the flat buffer, each with its place in the buffer, its place in the chunk and its
/// tensor's rule. Passes over the whole buffer, not one per tensor: most of a small model's
/// tensors are shorter than a chunk, and a parallel loop per tensor would run each on one
/// core and pay a round trip to the thread pool for each (`tiny` has 38).
fn parts(
    rules: &[(Range<usize>, UpdateRule)],
    index: usize,
    len: usize,
) -> impl Iterator<Item = (Range<usize>, Range<usize>, UpdateRule)> + '_ {
    let chunk = index * PARALLEL_CHUNK..index * PARALLEL_CHUNK + len;
    rules.iter().filter_map(move |(range, rule)| {
        let (start, end) = (range.start.max(chunk.start), range.end.min(chunk.end));
        (start < end).then(|| (start..end, start - chunk.start..end - chunk.start, *rule))
    })
}

impl AdamW {
    /// Weight prediction for delayed updates: the weights `horizon` further updates would
    /// reach if each one's gradient were `grad_scale · grads` again (the gradient just
    /// applied). The state is not changed.
    ///
    /// A kernel set compiled from these weights and run `horizon` updates later computes its
    /// gradient close to the weights that gradient is applied to, which is what delayed AdamW
    /// lacks (linear weight prediction: Kosson et al., "Pipelined Backpropagation at Scale",
    /// 2020; optimizer-aware prediction: PipeOptim, 2023). Assuming the next gradient repeats
    /// the last one, rather than only extrapolating the first moment, closed more of the
    /// validation-loss gap to synchronous training on `tiny` (docs/benchmarks.md).
    pub fn predict(
        &self,
        params: &Params,
        state: &AdamState,
        grads: &Params,
        grad_scale: f32,
        lr: f32,
        horizon: f32,
    ) -> Params {
        let mut out = Params::zeros(params.layout.clone());
        let rules = self.rules(params, state.t + 1, lr);
        let chunks = out.data.par_chunks_mut(PARALLEL_CHUNK).enumerate();
        chunks.for_each(|(i, o)| {
            for (at, local, rule) in parts(&rules, i, o.len()) {
                let (w, g) = (&params.data[at.clone()], &grads.data[at.clone()]);
                let (m, v) = (&state.m.data[at.clone()], &state.v.data[at]);
                let values = o[local].iter_mut().zip(w).zip(m).zip(v).zip(g);
                for ((((o, &w), &m), &v), &g) in values {
                    let (_, _, dw) = rule.apply(w, m, v, g * grad_scale);
                    *o = w - horizon * dw;
                }
            }
        });
        out
    }

    /// The per-coordinate rule of update number `t` (1-based) at learning rate `lr`, for a
    /// tensor with or without weight decay.
    /// Each tensor's rule at update `t`, with the part of the flat buffer the tensor covers.
    fn rules(&self, params: &Params, t: u64, lr: f32) -> Vec<(Range<usize>, UpdateRule)> {
        let tensors = params.layout.tensors.iter();
        tensors
            .map(|spec| (spec.range.clone(), self.rule(t, lr, spec.decay)))
            .collect()
    }

    fn rule(&self, t: u64, lr: f32, decay: bool) -> UpdateRule {
        let t = t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        let wd = if decay { self.weight_decay } else { 0.0 };
        UpdateRule {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            step: (lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            lr,
            wd,
        }
    }
}

/// AdamW for one coordinate at one update: what [`AdamW::update`] applies and
/// [`AdamW::predict`] extrapolates.
#[derive(Clone, Copy)]
struct UpdateRule {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// lr / (1 − β1ᵗ)
    step: f32,
    /// √(1 − β2ᵗ)
    bc2_sqrt: f32,
    lr: f32,
    wd: f32,
}

impl UpdateRule {
    /// The new moments for gradient `g`, and how far the weight `w` moves down.
    #[inline(always)]
    fn apply(self, w: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        let denom = v.sqrt() / self.bc2_sqrt + self.eps;
        (m, v, self.step * m / denom + self.lr * self.wd * w)
    }

    /// One chunk of the update: `w` becomes the updated `old` (or itself, with `None`), with
    /// `grad_scale · g` the gradient. A plain loop, for [`vectorised`] to compile wide.
    #[inline(always)]
    fn update(
        self,
        w: &mut [f32],
        old: Option<&[f32]>,
        m: &mut [f32],
        v: &mut [f32],
        g: &[f32],
        grad_scale: f32,
    ) {
        let step = |w: f32, m: &mut f32, v: &mut f32, g: f32| {
            let (m_new, v_new, dw) = self.apply(w, *m, *v, g * grad_scale);
            (*m, *v) = (m_new, v_new);
            w - dw
        };
        match old {
            None => {
                for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                    *w = step(*w, m, v, g);
                }
            }
            Some(old) => {
                for ((((w, &old), m), v), &g) in w.iter_mut().zip(old).zip(m).zip(v).zip(g) {
                    *w = step(old, m, v, g);
                }
            }
        }
    }
}

/// DC-ASGD-a (Zheng et al. 2017), the correction of a gradient computed at weights older than
/// the master's: it moves the gradient towards the one at the master weights with the diagonal
/// of the outer-product approximation of the Hessian, `g + λ·g⊙g⊙(w − w_stale)/rms`, clamped
/// so that no gradient changes sign or more than doubles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DelayCompensation {
    /// λ: `c / lr`, since AdamW moves each weight by about one learning rate per step, so that
    /// the strength `c` means the same at any learning rate.
    pub lambda: f32,
    /// AdamW's ε, which keeps `rms` away from zero.
    pub eps: f32,
}

impl DelayCompensation {
    /// The correction of strength `c` for AdamW at peak learning rate `lr`.
    pub fn new(c: f32, lr: f32, adam: &AdamW) -> DelayCompensation {
        DelayCompensation {
            lambda: c / lr,
            eps: adam.eps,
        }
    }

    /// Corrects `grads`, computed at `stale`, towards the gradient at `master`, using AdamW's
    /// second moments for `rms`. The gradient is first multiplied by `unscale` (the loss scale
    /// and accumulation undone), in the same pass; returns the norm of the result.
    pub fn correct(
        &self,
        grads: &mut Params,
        unscale: f32,
        master: &Params,
        stale: &Params,
        state: &AdamState,
    ) -> f32 {
        let chunks = grads
            .data
            .par_chunks_mut(PARALLEL_CHUNK)
            .zip(master.data.par_chunks(PARALLEL_CHUNK))
            .zip(stale.data.par_chunks(PARALLEL_CHUNK))
            .zip(state.v.data.par_chunks(PARALLEL_CHUNK));
        // Chunk sums in order, added serially: the norm must not depend on the split (see
        // `grad_norm`).
        let partial: Vec<f64> = chunks
            .map(|(((g, w), ws), v)| {
                vectorised(
                    #[inline(always)]
                    || self.correct_chunk(g, w, ws, v, unscale),
                )
            })
            .collect();
        partial.iter().sum::<f64>().sqrt() as f32
    }

    /// One chunk of [`DelayCompensation::correct`]; returns the chunk's Σ g² after it.
    #[inline(always)]
    fn correct_chunk(&self, g: &mut [f32], w: &[f32], ws: &[f32], v: &[f32], unscale: f32) -> f64 {
        let (lambda, eps) = (self.lambda, self.eps);
        for (((g, w), ws), v) in g.iter_mut().zip(w).zip(ws).zip(v) {
            *g *= unscale;
            // The mean square includes the current gradient, so a gradient appearing for the
            // first time (v still 0) cannot blow the correction up.
            let rms = v.max(*g * *g).sqrt();
            // g + λ·g²·Δw/rms = g·(1 + λ·g·Δw/rms). The diagonal g² is a rough stand-in for
            // the curvature, so the correction is trusted only as far as it keeps the
            // gradient's sign and at most doubles it: unclamped, it overturned steady
            // gradients at a high learning rate and training diverged.
            let factor = 1.0 + lambda * *g * (w - ws) / (rms + eps);
            *g *= factor.clamp(0.0, 2.0);
        }
        sum_squares(g)
    }
}

/// The global L2 norm of a gradient.
pub fn grad_norm(grads: &Params) -> f32 {
    // Chunk sums are collected in order and added serially, so the norm does not depend on
    // how the work was split: resumed runs must match uninterrupted ones bit for bit.
    let partial: Vec<f64> = grads
        .data
        .par_chunks(PARALLEL_CHUNK)
        .map(|chunk| {
            vectorised(
                #[inline(always)]
                || sum_squares(chunk),
            )
        })
        .collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

/// Σ v², in f64. Eight running sums rather than one: a single f64 sum is a chain of
/// dependent adds that runs at one value per add latency, while the lanes vectorise. The
/// order of the adds is fixed by the slice alone, so the result is too.
#[inline(always)]
pub fn sum_squares(v: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += f64::from(x) * f64::from(x);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 if it is within).
pub fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    if norm > max_norm && norm.is_finite() {
        max_norm / norm
    } else {
        1.0
    }
}

/// Scales the gradient down to `max_norm` if its norm is larger; returns the norm before.
pub fn clip_grad_norm(grads: &mut Params, max_norm: f32) -> f32 {
    let norm = grad_norm(grads);
    let s = clip_factor(norm, max_norm);
    if s != 1.0 {
        scale_all(grads, s);
    }
    norm
}

/// Linear warmup to `max_lr`, then cosine decay to `min_lr` at `total` steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub max_lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    pub total: u64,
}

impl LrSchedule {
    /// The learning rate of update `step` (0-based).
    pub fn at(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.max_lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + (self.max_lr - self.min_lr) * cosine as f32
    }
}

/// Dynamic loss scaling: gradients are computed at `scale ×` the loss so that fp16 keeps them
/// from underflowing; an overflow skips the update and halves the scale, and every `growth_interval`
/// good steps in a row double it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f32,
    pub growth_interval: u32,
    pub good_steps: u32,
    pub min_scale: f32,
    pub max_scale: f32,
}

impl LossScaler {
    pub fn new(initial: f32) -> LossScaler {
        LossScaler {
            scale: initial,
            growth_interval: 200,
            good_steps: 0,
            min_scale: 1.0,
            max_scale: 65536.0,
        }
    }

    /// A scaler that never changes (fp32 training).
    pub fn fixed() -> LossScaler {
        LossScaler {
            scale: 1.0,
            growth_interval: u32::MAX,
            good_steps: 0,
            min_scale: 1.0,
            max_scale: 1.0,
        }
    }

    /// Records whether the (still scaled) gradient was finite; returns true if the update may
    /// be applied.
    pub fn observe(&mut self, grads_finite: bool) -> bool {
        if !grads_finite {
            self.scale = (self.scale / 2.0).max(self.min_scale);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale = (self.scale * 2.0).min(self.max_scale);
            self.good_steps = 0;
        }
        true
    }
}

/// Sets every value to zero (multiplying by zero would keep the NaNs of an overflowed step).
pub fn zero_all(values: &mut Params) {
    values
        .data
        .par_chunks_mut(PARALLEL_CHUNK)
        .for_each(|c| c.fill(0.0));
}

/// Multiplies every value by `s`.
pub fn scale_all(values: &mut Params, s: f32) {
    values
        .data
        .par_chunks_mut(PARALLEL_CHUNK)
        .for_each(|c| c.iter_mut().for_each(|g| *g *= s));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelConfig, ParamLayout};
    use std::sync::Arc;

    /// The layout of `tiny` cut to one layer: every kind of tensor, few parameters.
    fn one_layer() -> Arc<ParamLayout> {
        let mut c = ModelConfig::tiny();
        c.n_layers = 1;
        Arc::new(ParamLayout::new(&c))
    }

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let s = LrSchedule {
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup: 10,
            total: 110,
        };
        assert!((s.at(0) - 1e-4).abs() < 1e-9);
        assert!((s.at(9) - 1e-3).abs() < 1e-9);
        assert!((s.at(10) - 1e-3).abs() < 1e-9);
        assert!((s.at(60) - 5.5e-4).abs() < 1e-7);
        assert!((s.at(110) - 1e-4).abs() < 1e-9);
        assert!((s.at(500) - 1e-4).abs() < 1e-9);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_times_sign() {
        // On the first step m̂ = g and v̂ = g², so the move is lr·g/(|g| + eps) + lr·wd·w.
        let layout = one_layer();
        let mut p = Params::zeros(layout.clone());
        p.data.iter_mut().for_each(|w| *w = 0.5);
        let mut g = Params::zeros(layout.clone());
        g.data
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = if i % 2 == 0 { 2.0 } else { -0.01 });
        let mut state = AdamState::new(&p);
        AdamW::default().update(&mut p, &g, &mut state, 0.01);
        let embed0 = p.data[0]; // a matrix entry with g > 0: decayed too
        assert!(
            (embed0 - (0.5 - 0.01 - 0.01 * 0.1 * 0.5)).abs() < 1e-6,
            "{embed0}"
        );
        let rms = layout.rms_final().start; // a norm weight: no decay
        let expect = if rms % 2 == 0 { 0.5 - 0.01 } else { 0.5 + 0.01 };
        assert!((p.data[rms] - expect).abs() < 1e-5);
    }

    #[test]
    fn one_step_prediction_lands_where_the_same_gradient_takes_the_weights() {
        let layout = one_layer();
        let wave = |scale: f32, f: f32| {
            let mut p = Params::zeros(layout.clone());
            for (i, x) in p.data.iter_mut().enumerate() {
                *x = scale * ((i as f32) * f).sin();
            }
            p
        };
        let (mut p, g0, g1) = (wave(0.5, 0.37), wave(0.02, 0.11), wave(0.03, 0.23));
        let adam = AdamW::default();
        let mut state = AdamState::new(&p);
        adam.update(&mut p, &g0, &mut state, 3e-3);
        adam.update(&mut p, &g1, &mut state, 3e-3);
        let predicted = adam.predict(&p, &state, &g1, 1.0, 2e-3, 1.0);
        // A gradient handed in at twice its size with grad_scale ½ predicts the same.
        let mut g1_doubled = g1.clone();
        g1_doubled.data.iter_mut().for_each(|g| *g *= 2.0);
        let from_doubled = adam.predict(&p, &state, &g1_doubled, 0.5, 2e-3, 1.0);
        assert_eq!(from_doubled.data, predicted.data);
        let still = adam.predict(&p, &state, &g1, 1.0, 2e-3, 0.0);
        assert_eq!(still.data, p.data, "horizon 0 predicts no move");
        let before = (state.m.clone(), state.v.clone(), state.t);
        let mut stepped = p.clone();
        adam.update(&mut stepped, &g1, &mut state, 2e-3);
        assert_ne!(before.2, state.t);
        for (i, (a, b)) in predicted.data.iter().zip(&stepped.data).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{i}: {a} vs {b}");
        }
        assert_ne!(predicted.data, p.data);
        // Two steps ahead moves twice as far from the current weights.
        let (m, v, t) = before;
        let state = AdamState { m, v, t };
        let two = adam.predict(&p, &state, &g1, 1.0, 2e-3, 2.0);
        for i in (0..p.data.len()).step_by(97) {
            let (d1, d2) = (predicted.data[i] - p.data[i], two.data[i] - p.data[i]);
            assert!((d2 - 2.0 * d1).abs() <= 1e-6, "{i}: {d1} {d2}");
        }
    }

    #[test]
    fn a_scaled_update_equals_an_update_with_the_scaled_gradient() {
        let layout = one_layer();
        let mut p = Params::zeros(layout.clone());
        let mut g = Params::zeros(layout);
        for (i, (w, g)) in p.data.iter_mut().zip(&mut g.data).enumerate() {
            *w = ((i as f32) * 0.37).sin();
            *g = ((i as f32) * 0.11).cos() * 8.0;
        }
        let mut scaled_g = g.clone();
        scaled_g.data.iter_mut().for_each(|x| *x *= 0.125);
        let adam = AdamW::default();
        let (mut a, mut b) = (p.clone(), p);
        let (mut sa, mut sb) = (AdamState::new(&a), AdamState::new(&b));
        for _ in 0..3 {
            adam.update(&mut a, &scaled_g, &mut sa, 1e-3);
            adam.update_scaled(&mut b, &g, 0.125, &mut sb, 1e-3);
        }
        // 0.125 is a power of two, so both see bit-identical gradients.
        assert_eq!(a.data, b.data);
        assert_eq!(sa, sb);
    }

    /// Textbook AdamW on one parameter, in f64: the reference the parallel pass is held to.
    fn adamw_scalar(
        a: &AdamW,
        t: i32,
        lr: f64,
        decay: bool,
        w: f64,
        (m, v): &mut (f64, f64),
        g: f64,
    ) -> f64 {
        let (b1, b2) = (a.beta1 as f64, a.beta2 as f64);
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let (m_hat, v_hat) = (*m / (1.0 - b1.powi(t)), *v / (1.0 - b2.powi(t)));
        let wd = if decay { a.weight_decay as f64 } else { 0.0 };
        w - lr * (m_hat / (v_hat.sqrt() + a.eps as f64) + wd * w)
    }

    #[test]
    fn every_parameter_moves_as_scalar_adamw_with_its_own_tensors_decay() {
        // All of `tiny`: more parameters than a parallel chunk, so chunks span tensors of
        // both kinds (matrices decay, norms do not) and end inside them.
        let layout = Arc::new(ParamLayout::new(&ModelConfig::tiny()));
        assert!(layout.len > 4 * PARALLEL_CHUNK);
        assert!(layout.tensors.iter().any(|t| !t.decay));
        let mut p = Params::zeros(layout.clone());
        let mut g = Params::zeros(layout.clone());
        for (i, (w, g)) in p.data.iter_mut().zip(&mut g.data).enumerate() {
            *w = ((i as f32) * 0.31).sin();
            *g = ((i as f32) * 0.17).cos() * 0.1;
        }
        let adam = AdamW::default();
        let mut state = AdamState::new(&p);
        let mut w_ref: Vec<f64> = p.data.iter().map(|&w| w as f64).collect();
        let mut moments = vec![(0.0f64, 0.0f64); w_ref.len()];
        let mut spare = Params::zeros(layout.clone());
        for t in 1..=3 {
            let lr = 1e-2 * t as f32;
            if t == 2 {
                // The out-of-place pass takes the same path through the chunks.
                adam.update_scaled_from(&p, &mut spare, &g, 0.5, &mut state, lr);
                std::mem::swap(&mut p, &mut spare);
            } else {
                adam.update_scaled(&mut p, &g, 0.5, &mut state, lr);
            }
            for spec in &layout.tensors {
                for i in spec.range.clone() {
                    let gi = 0.5 * g.data[i] as f64;
                    w_ref[i] = adamw_scalar(
                        &adam,
                        t,
                        lr as f64,
                        spec.decay,
                        w_ref[i],
                        &mut moments[i],
                        gi,
                    );
                }
            }
            for spec in &layout.tensors {
                for i in spec.range.clone() {
                    let (got, want) = (p.data[i] as f64, w_ref[i]);
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "step {t}, {} [{}]: {got} vs {want}",
                        spec.name,
                        i - spec.range.start
                    );
                }
            }
        }
    }

    #[test]
    fn an_update_into_another_buffer_equals_the_update_in_place() {
        let layout = one_layer();
        let mut p = Params::zeros(layout.clone());
        let mut g = Params::zeros(layout.clone());
        for (i, (w, g)) in p.data.iter_mut().zip(&mut g.data).enumerate() {
            *w = ((i as f32) * 0.29).sin();
            *g = ((i as f32) * 0.13).cos();
        }
        let adam = AdamW::default();
        let (mut in_place, mut current) = (p.clone(), p);
        let (mut sa, mut sb) = (AdamState::new(&in_place), AdamState::new(&current));
        // The buffer written into holds stale values, which must not leak into the result.
        let mut spare = Params::zeros(layout);
        spare.data.fill(f32::NAN);
        for step in 0..3 {
            let lr = 1e-3 * (step + 1) as f32;
            adam.update_scaled(&mut in_place, &g, 0.5, &mut sa, lr);
            let before = current.clone();
            adam.update_scaled_from(&current, &mut spare, &g, 0.5, &mut sb, lr);
            assert_eq!(current, before, "the source is left as it was");
            std::mem::swap(&mut current, &mut spare);
            assert_eq!(in_place.data, current.data, "step {step}");
            assert_eq!(sa, sb, "step {step}");
        }
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let c = ModelConfig::tiny();
        let layout = Arc::new(ParamLayout::new(&c));
        let mut g = Params::zeros(layout);
        g.data[0] = 3.0;
        g.data[1] = 4.0;
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-6);
        assert!((g.data[0] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn loss_scaler_halves_on_overflow_and_grows_after_good_runs() {
        let mut s = LossScaler::new(256.0);
        s.growth_interval = 3;
        assert!(!s.observe(false));
        assert_eq!(s.scale, 128.0);
        assert!(s.observe(true) && s.observe(true));
        assert_eq!(s.scale, 128.0);
        assert!(s.observe(true));
        assert_eq!(s.scale, 256.0);
    }

    #[test]
    fn delay_compensation_follows_dc_asgd_a() {
        let mut c = ModelConfig::tiny();
        c.n_layers = 1;
        let layout = Arc::new(ParamLayout::new(&c));
        let zeros = Params::zeros(layout.clone());
        let (mut g, mut w, mut ws, mut adam) = (
            zeros.clone(),
            zeros.clone(),
            zeros.clone(),
            AdamState::new(&zeros),
        );
        // Entry 0: g = 2, w − w_s = 0.5, v = 9 → 2 + 0.3·4·0.5/3 = 2.2.
        (g.data[0], w.data[0], ws.data[0], adam.v.data[0]) = (2.0, 1.5, 1.0, 9.0);
        // Entry 1: v = 0 (a first gradient): the rms is |g| = 1 → 1 + 0.3·1·(−2)/1 = 0.4.
        (g.data[1], w.data[1], ws.data[1]) = (1.0, 0.0, 2.0);
        // λ = c / lr: c = 0.6 at lr 2 gives the λ = 0.3 of the figures above.
        let compensation = DelayCompensation::new(0.6, 2.0, &AdamW::default());
        // Entry 3: 1 + 0.3·2·(−10)/2 = −2 would flip the sign: clamped to 0.
        (g.data[3], w.data[3], ws.data[3], adam.v.data[3]) = (2.0, 0.0, 10.0, 4.0);
        // Entry 4: 1 + 0.3·2·10/2 = 4 would quadruple it: clamped to double.
        (g.data[4], w.data[4], ws.data[4], adam.v.data[4]) = (2.0, 10.0, 0.0, 4.0);
        // Handed in at twice the size, with the unscale factor that undoes it.
        scale_all(&mut g, 2.0);
        let norm = compensation.correct(&mut g, 0.5, &w, &ws, &adam);
        assert_eq!((g.data[3], g.data[4]), (0.0, 4.0));
        assert!((g.data[0] - 2.2).abs() < 1e-6, "{}", g.data[0]);
        assert!((g.data[1] - 0.4).abs() < 1e-6, "{}", g.data[1]);
        assert_eq!(g.data[2], 0.0);
        // The norm of the result: √(2.2² + 0.4² + 4²).
        let want = (2.2f32 * 2.2 + 0.4 * 0.4 + 16.0).sqrt();
        assert!((norm - want).abs() < 1e-5, "{norm} vs {want}");
    }
}

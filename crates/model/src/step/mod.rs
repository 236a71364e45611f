//! One training micro-step: forward through every layer's kernels, loss on the host, backward
//! through the kernels, weight gradients on the host.
//!
//! A [`KernelSet`] runs on one immutable [`WeightSnapshot`]; the host-side math of a step
//! (embedding, norms, classifier) reads that same snapshot, so forward and backward of a
//! micro-step always see one version of the weights, however far the master weights have moved.
//! A set either has the snapshot's weights baked in ([`compile_kernel_set`]: new weights mean a
//! new set) or takes them as inputs ([`compile_dynamic_kernel_set`]: compiled once; new weights
//! are staged into every layer's persistent inputs by [`KernelSet::stage`]).

mod buffers;
mod kernel_set;
mod timing;
mod weight_grads;

pub use buffers::StepBuffers;
pub use kernel_set::{
    compile_dynamic_kernel_set, compile_kernel_set, run_programs, BakedPrograms, KernelSet,
    LayerGroup, SharedKernel,
};
pub use timing::{HostSpan, HostTimer, StepTiming};

use crate::config::ModelConfig;
use crate::host;
use crate::kernels::{KernelKind, StageError};
use crate::params::{LayerTensor, Params};
use anetrain_device::clock::Clock;
use anetrain_device::host_math::HostMath;
use anetrain_device::{Device, DeviceError};
use anetrain_mil::check::CheckError;
use buffers::{BackwardBuffers, LayerTape};
use kernel_set::eval;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;
use weight_grads::{GradSlots, WeightGradWorker, WgradInput, WgradInput::Kept};

/// Immutable weights with the version of the optimizer update that produced them.
#[derive(Clone, Debug)]
pub struct WeightSnapshot {
    pub version: u64,
    pub params: Arc<Params>,
}

#[derive(Debug, Error)]
pub enum StepError {
    #[error("generating kernel {kernel}: {source}")]
    Generate {
        kernel: String,
        source: Box<CheckError>,
    },
    #[error("compiling kernel {kernel}: {source}")]
    Compile { kernel: String, source: DeviceError },
    #[error("evaluating kernel {kernel}: {source}")]
    Eval { kernel: String, source: DeviceError },
    #[error("token {token} at position {position} is outside the vocabulary of {vocab}")]
    Token {
        token: u32,
        position: usize,
        vocab: usize,
    },
    #[error("expected {expected} tokens and targets, got {tokens} and {targets}")]
    Length {
        expected: usize,
        tokens: usize,
        targets: usize,
    },
    #[error(
        "the kernel set of weights version {version} has its weights baked in: \
         new weights need a new set"
    )]
    BakedWeights { version: u64 },
    #[error(
        "weights of another model configuration (`{found}`) cannot be staged into the kernels \
         of `{expected}`"
    )]
    ModelMismatch { expected: String, found: String },
    #[error("staging weights into kernel {kernel}: {source}")]
    Stage { kernel: String, source: StageError },
    #[error("the kernel set of weights version {version} has released its weights")]
    Released { version: u64 },
    #[error("layers {}..{} are not layers of a model of {layers}", .range.start, .range.end)]
    Layers {
        range: std::ops::Range<usize>,
        layers: usize,
    },
}

fn check_tokens(config: &ModelConfig, tokens: &[u32], targets: &[u32]) -> Result<(), StepError> {
    if tokens.len() != config.seq_len || targets.len() != config.seq_len {
        return Err(StepError::Length {
            expected: config.seq_len,
            tokens: tokens.len(),
            targets: targets.len(),
        });
    }
    let inputs = tokens.iter().enumerate();
    let trained = targets
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != crate::IGNORED_TARGET);
    for (position, &token) in inputs.chain(trained) {
        if token as usize >= config.vocab {
            return Err(StepError::Token {
                token,
                position,
                vocab: config.vocab,
            });
        }
    }
    Ok(())
}

/// Forward through all layers; leaves the final hidden state in `buf.x` and the tapes filled.
fn forward(
    device: &dyn Device,
    set: &mut KernelSet,
    buf: &mut StepBuffers,
    tokens: &[u32],
    timing: &mut StepTiming,
) -> Result<(), StepError> {
    let params = set.snapshot().params.clone();
    if params.data.len() != params.layout.len {
        return Err(StepError::Released {
            version: set.version(),
        });
    }
    let c = buf.config.clone();
    let t0 = timing.host_start();
    host::embed_forward(params.get(params.layout.embed()), c.dim, tokens, &mut buf.x);
    timing.host_end(t0, Some("embedding"));
    for (l, tape) in buf.tapes.iter_mut().enumerate() {
        tape.x.copy_from_slice(&buf.x);
        attention_forward(device, set, l, tape, timing)?;
        ffn_forward(device, set, l, tape, &mut buf.x, timing)?;
    }
    Ok(())
}

/// Layer `l`'s attention on the device, and its residual on the host:
/// `x2 = x + attention(norm(x))`, with the activations the backward needs kept in the tape.
fn attention_forward(
    device: &dyn Device,
    set: &mut KernelSet,
    l: usize,
    tape: &mut LayerTape,
    timing: &mut StepTiming,
) -> Result<(), StepError> {
    let kind = KernelKind::FwdAttn;
    set.eval(device, l, kind, &tape.x, &mut tape.attn.data, timing)?;
    let t = timing.host_start();
    for ((x2, x), o) in tape.x2.iter_mut().zip(&tape.x).zip(tape.attn.part("o")) {
        *x2 = x + o;
    }
    timing.host_end(t, None);
    Ok(())
}

/// The backward of [`attention_forward`]: the gradient at `x2` (in `back.dx`) becomes the
/// gradient at the layer's input (in `back.dy`), through three kernels; the weight gradients
/// of `Wo`, `Wq`, `Wk`, `Wv` go to the helper, and the norm's backward runs on the host.
impl<'env> Backward<'_, 'env, '_, '_> {
    fn attention(
        &mut self,
        l: usize,
        tape: &'env LayerTape,
        back: &mut BackwardBuffers,
    ) -> Result<(), StepError> {
        let c = self.config;
        let (d, s, q, kv) = (c.dim, c.seq_len, c.q_dim(), c.kv_dim());
        let layer = |t: LayerTensor| self.params.layout.layer(l, t);
        let dx2 = &back.dx;
        let attn = tape.attn.part("attn");
        let dwo = self.grad.take(layer(LayerTensor::Wo));
        self.wgrad.submit_copied(dwo, dx2, attn, [d, q, s]);
        for part in ["q_rope", "k_rope", "v"] {
            back.attn1_in
                .part_mut(part)
                .copy_from_slice(tape.attn.part(part));
        }
        back.attn1_in.part_mut("dx2").copy_from_slice(dx2);
        let kind = KernelKind::BwdAttn1;
        let (input, output) = (&back.attn1_in.data, &mut back.attn1_out.data);
        self.set
            .eval(self.device, l, kind, input, output, self.timing)?;
        for part in ["probs", "dprobs"] {
            back.attn2_in
                .part_mut(part)
                .copy_from_slice(back.attn1_out.part(part));
        }
        for part in ["q_rope", "k_rope"] {
            back.attn2_in
                .part_mut(part)
                .copy_from_slice(tape.attn.part(part));
        }
        eval(
            self.device,
            &mut self.shared.bwd_attn2,
            (KernelKind::BwdAttn2, l),
            &back.attn2_in.data,
            &mut back.attn2_out.data,
            self.timing,
        )?;
        back.qkv_in
            .part_mut("dq_rope")
            .copy_from_slice(back.attn2_out.part("dq_rope"));
        back.qkv_in
            .part_mut("dk_rope")
            .copy_from_slice(back.attn2_out.part("dk_rope"));
        back.qkv_in
            .part_mut("dv")
            .copy_from_slice(back.attn1_out.part("dv"));
        if c.qk_norm {
            for part in ["qf", "kf"] {
                back.qkv_in
                    .part_mut(part)
                    .copy_from_slice(tape.attn.part(part));
            }
        }
        let kind = KernelKind::BwdQkv;
        let (input, output) = (&back.qkv_in.data, &mut back.qkv_out.data);
        self.set
            .eval(self.device, l, kind, input, output, self.timing)?;
        let t = self.timing.host_start();
        let xnorm = tape.attn.part("xnorm");
        let (dq, dk) = (back.qkv_out.part("dq"), back.qkv_out.part("dk"));
        let dv = back.attn1_out.part("dv");
        let dwq = self.grad.take(layer(LayerTensor::Wq));
        self.wgrad.submit_copied(dwq, dq, xnorm, [q, d, s]);
        let dwk = self.grad.take(layer(LayerTensor::Wk));
        self.wgrad.submit_copied(dwk, dk, xnorm, [kv, d, s]);
        let dwv = self.grad.take(layer(LayerTensor::Wv));
        self.wgrad.submit_copied(dwv, dv, xnorm, [kv, d, s]);
        if c.qk_norm {
            for (t, part) in [(LayerTensor::QNorm, "dqw"), (LayerTensor::KNorm, "dkw")] {
                let dw = self.grad.take(layer(t));
                host::head_norm_weight_grad(dw, back.qkv_out.part(part), s);
            }
        }
        host::prenorm_backward(
            &mut back.dy,
            back.qkv_out.part("dx"),
            &tape.x,
            self.params.layer(l, LayerTensor::RmsAtt),
            self.config.norm_eps,
            &back.dx,
            self.grad.take(layer(LayerTensor::RmsAtt)),
        );
        self.timing.host_end(t, Some("norm backward"));
        Ok(())
    }
}

/// Layer `l`'s SwiGLU FFN on the device, and its residual on the host:
/// `x_out = x2 + ffn(norm(x2))`.
fn ffn_forward(
    device: &dyn Device,
    set: &mut KernelSet,
    l: usize,
    tape: &mut LayerTape,
    x_out: &mut [f32],
    timing: &mut StepTiming,
) -> Result<(), StepError> {
    let kind = KernelKind::FwdFfn;
    set.eval(device, l, kind, &tape.x2, &mut tape.ffn.data, timing)?;
    let t = timing.host_start();
    for ((x, x2), f) in x_out.iter_mut().zip(&tape.x2).zip(tape.ffn.part("ffn")) {
        *x = x2 + f;
    }
    timing.host_end(t, None);
    Ok(())
}

/// The backward of [`ffn_forward`]: the gradient at the layer's output (in `back.dy`) becomes
/// the gradient at `x2` (in `back.dx`, the FFN branch's plus the residual's), through one
/// kernel; the weight gradients of `W1`, `W2`, `W3` go to the helper, and the norm's backward
/// runs on the host.
impl<'env> Backward<'_, 'env, '_, '_> {
    fn ffn(
        &mut self,
        l: usize,
        tape: &'env LayerTape,
        back: &mut BackwardBuffers,
    ) -> Result<(), StepError> {
        let (d, h, s) = (self.config.dim, self.config.hidden, self.config.seq_len);
        let layer = |t: LayerTensor| self.params.layout.layer(l, t);
        back.ffn_in.part_mut("dffn").copy_from_slice(&back.dy);
        back.ffn_in
            .part_mut("h1")
            .copy_from_slice(tape.ffn.part("h1"));
        back.ffn_in
            .part_mut("h3")
            .copy_from_slice(tape.ffn.part("h3"));
        let kind = KernelKind::BwdFfn;
        let (input, output) = (&back.ffn_in.data, &mut back.ffn_out.data);
        self.set
            .eval(self.device, l, kind, input, output, self.timing)?;
        let t = self.timing.host_start();
        let x2norm = tape.ffn.part("xnorm");
        let gate = tape.ffn.part("gate");
        let dw2 = self.grad.take(layer(LayerTensor::W2));
        self.wgrad.submit_copied(dw2, &back.dy, gate, [d, h, s]);
        let dw1 = self.grad.take(layer(LayerTensor::W1));
        self.wgrad
            .submit_copied(dw1, back.ffn_out.part("dh1"), x2norm, [h, d, s]);
        let dw3 = self.grad.take(layer(LayerTensor::W3));
        self.wgrad
            .submit_copied(dw3, back.ffn_out.part("dh3"), x2norm, [h, d, s]);
        host::prenorm_backward(
            &mut back.dx,
            back.ffn_out.part("dx"),
            &tape.x2,
            self.params.layer(l, LayerTensor::RmsFfn),
            self.config.norm_eps,
            &back.dy,
            self.grad.take(layer(LayerTensor::RmsFfn)),
        );
        self.timing.host_end(t, Some("norm backward"));
        Ok(())
    }
}

/// What every layer's backward works with: the device and the kernels, the snapshot's
/// weights, the gradient slots and the weight-gradient helper, and the step's timing.
struct Backward<'s, 'env, 'scope, 'c> {
    device: &'s dyn Device,
    set: &'s mut KernelSet,
    shared: &'s mut SharedKernel,
    params: &'env Params,
    config: &'s ModelConfig,
    grad: GradSlots<'env>,
    wgrad: WeightGradWorker<'scope, 'env>,
    timing: &'s mut StepTiming<'c>,
}

/// Final norm, classifier and cross-entropy of the hidden state in `buf.x`: returns the loss
/// with the column scales (`dlogits` and they hold the gradient of `scale ·` loss; see
/// [`host::CrossEntropy`]) and the reciprocal RMS of the final norm.
fn head_loss(
    params: &Params,
    buf: &mut StepBuffers,
    targets: &[u32],
    scale: f32,
    host: HostMath,
) -> (host::CrossEntropy, Vec<f32>) {
    let c = &buf.config;
    let (d, v, s) = (c.dim, c.vocab, c.seq_len);
    let layout = &params.layout;
    let rrms = host::rmsnorm_forward(
        &buf.x,
        params.get(layout.rms_final()),
        c.norm_eps,
        s,
        &mut buf.x_final,
    );
    host::matmul(
        params.get(layout.classifier()),
        &buf.x_final,
        v,
        d,
        s,
        &mut buf.logits,
        host,
    );
    let ce = host::cross_entropy(&buf.logits, targets, v, scale, &mut buf.dlogits);
    (ce, rrms)
}

/// The mean cross-entropy of one window, forward only.
pub fn forward_loss(
    device: &dyn Device,
    clock: &dyn Clock,
    set: &mut KernelSet,
    buf: &mut StepBuffers,
    tokens: &[u32],
    targets: &[u32],
    host: HostMath,
) -> Result<f32, StepError> {
    check_tokens(&buf.config, tokens, targets)?;
    let mut timing = StepTiming::new(clock);
    forward(device, set, buf, tokens, &mut timing)?;
    let params = set.snapshot().params.clone();
    Ok(head_loss(&params, buf, targets, 1.0, host).0.loss)
}

/// The logits `[V][S]` of one window, forward only.
pub fn forward_logits(
    device: &dyn Device,
    clock: &dyn Clock,
    set: &mut KernelSet,
    buf: &mut StepBuffers,
    tokens: &[u32],
    host: HostMath,
) -> Result<Vec<f32>, StepError> {
    check_tokens(&buf.config, tokens, tokens)?;
    let mut timing = StepTiming::new(clock);
    forward(device, set, buf, tokens, &mut timing)?;
    let params = set.snapshot().params.clone();
    head_loss(&params, buf, tokens, 1.0, host);
    Ok(buf.logits.clone())
}

/// One micro-step: returns the loss and adds `loss_scale ×` the gradient of the mean
/// cross-entropy to `grads` (laid out like the parameters).
#[allow(clippy::too_many_arguments)]
pub fn micro_step<'c>(
    device: &dyn Device,
    clock: &'c dyn Clock,
    set: &mut KernelSet,
    shared: &mut SharedKernel,
    buf: &mut StepBuffers,
    tokens: &[u32],
    targets: &[u32],
    loss_scale: f32,
    grads: &mut Params,
    host: HostMath,
) -> Result<(f32, StepTiming<'c>), StepError> {
    check_tokens(&buf.config, tokens, targets)?;
    let mut timing = StepTiming::new(clock);
    forward(device, set, buf, tokens, &mut timing)?;
    let params = set.snapshot().params.clone();
    let layout = params.layout.clone();
    let c = buf.config.clone();
    let (d, v, s) = (c.dim, c.vocab, c.seq_len);

    // Head: loss, classifier and final-norm backward.
    let t = timing.host_start();
    let (ce, rrms_final) = head_loss(&params, buf, targets, loss_scale, host);
    let loss = ce.loss;
    host::matmul_t(
        params.get(layout.classifier()),
        &buf.dlogits,
        v,
        d,
        s,
        &mut buf.back.dx,
        host,
    );
    host::scale_columns(&mut buf.back.dx, &ce.column);
    timing.host_end(t, Some("loss and classifier"));

    let pool = buf.wgrad_pool(host.threads);
    let wgrad_pool = pool.as_ref().map(|p| &p.pool);
    let StepBuffers {
        tapes,
        x,
        x_final,
        dlogits,
        back,
        spare,
        ..
    } = &mut *buf;
    let tapes: &[LayerTape] = tapes;
    let busy = std::thread::scope(|scope| {
        let mut grad = GradSlots::new(grads);
        let mut wgrad = WeightGradWorker::start(scope, spare, wgrad_pool, host);
        // dW = dlogits·diag(column)·x_finalᵀ: the column scales go on the small side.
        let mut x_scaled = wgrad.copy(x_final);
        if let WgradInput::Copied(x) = &mut x_scaled {
            host::scale_columns(x, &ce.column);
        }
        wgrad.submit(
            grad.take(layout.classifier()),
            Kept(dlogits),
            x_scaled,
            [v, d, s],
        );
        let t = timing.host_start();
        host::rmsnorm_backward(
            &back.dx,
            x,
            params.get(layout.rms_final()),
            &rrms_final,
            &mut back.dy,
            grad.take(layout.rms_final()),
        );
        timing.host_end(t, Some("norm backward"));

        let mut backward = Backward {
            device,
            set,
            shared,
            params: &params,
            config: &c,
            grad,
            wgrad,
            timing: &mut timing,
        };
        for (l, tape) in tapes.iter().enumerate().rev() {
            backward.ffn(l, tape, back)?;
            backward.attention(l, tape, back)?;
        }
        // The step waits for its weight gradients only here, at its end. (On an error above,
        // dropping the worker closes its queue and the scope waits for it.)
        let Backward { wgrad, .. } = backward;
        let (t, on_clock) = (Instant::now(), timing.clock.now());
        let busy = wgrad.finish();
        timing.weight_grad_wait += t.elapsed();
        timing.span("waiting for weight gradients", on_clock);
        Ok::<_, StepError>(busy)
    })?;
    timing.weight_grads += busy;
    // After the wait: a tied classifier's gradient is the embedding's.
    let t = timing.host_start();
    host::embed_backward(grads.get_mut(layout.embed()), d, tokens, &buf.back.dy);
    timing.host_end(t, Some("embedding backward"));
    Ok((loss, timing))
}

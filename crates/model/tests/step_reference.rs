//! The training step (MIL kernels on the CPU device plus host math) against the independent
//! f64 reference model: the loss and every parameter's gradient.

mod reference;

use anetrain_device::clock::RealClock;
use anetrain_device::host_math::HostMath;
use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_model::init::init_params;
use anetrain_model::step::{
    compile_dynamic_kernel_set, compile_kernel_set, micro_step, KernelSet, SharedKernel,
    StepBuffers, StepError, WeightSnapshot,
};
use anetrain_model::{ModelConfig, ParamLayout, Params};
use std::sync::Arc;

fn config(n_kv_heads: usize, tied: bool) -> ModelConfig {
    with_qk_norm(n_kv_heads, tied, false)
}

fn with_qk_norm(n_kv_heads: usize, tied: bool, qk_norm: bool) -> ModelConfig {
    ModelConfig {
        name: "small".into(),
        dim: 32,
        hidden: 48,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads,
        head_dim: 8,
        vocab: 37,
        seq_len: 16,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: tied,
        qk_norm,
    }
}

/// Parameters with more spread than the default init, so every path carries signal; the q/k
/// norm weights between 0.7 and 1.3 rather than all one, so that their order matters.
fn params(c: &ModelConfig, seed: u64) -> Params {
    let mut p = init_params(Arc::new(ParamLayout::new(c)), seed);
    for spec in p.layout.tensors.clone() {
        for (i, v) in p.data[spec.range.clone()].iter_mut().enumerate() {
            *v = if spec.decay {
                *v * 10.0
            } else if spec.name.ends_with("_norm") {
                *v + 0.3 * (i as f32 * 0.7).sin()
            } else {
                *v + 0.1 * (*v - 1.0)
            };
        }
    }
    p
}

/// How a kernel set is built: weights baked in, or passed in the inputs (dynamic).
type Compile = fn(&dyn Device, WeightSnapshot) -> Result<KernelSet, StepError>;

const KERNEL_SETS: [(&str, Compile); 2] = [
    ("baked", compile_kernel_set),
    ("dynamic", compile_dynamic_kernel_set),
];

fn step_grads(
    compile: Compile,
    p: &Params,
    mode: NumericMode,
    tokens: &[u32],
    targets: &[u32],
    scale: f32,
) -> (f32, Params) {
    let c = &p.layout.config;
    let device = CpuDevice::new(mode).with_threads(1);
    let clock = RealClock::new();
    let snap = WeightSnapshot {
        version: 0,
        params: Arc::new(p.clone()),
    };
    let mut set = compile(&device, snap).unwrap();
    let mut shared = SharedKernel::compile(&device, p).unwrap();
    let mut buf = StepBuffers::new(c);
    let mut grads = Params::zeros(p.layout.clone());
    let (loss, _) = micro_step(
        &device,
        &clock,
        &mut set,
        &mut shared,
        &mut buf,
        tokens,
        targets,
        scale,
        &mut grads,
        HostMath::best_built(1),
    )
    .unwrap();
    grads.data.iter_mut().for_each(|g| *g /= scale);
    (loss, grads)
}

fn window(c: &ModelConfig, seed: u32) -> (Vec<u32>, Vec<u32>) {
    let v = c.vocab as u32;
    let tokens = (0..c.seq_len as u32)
        .map(|i| (i * 7 + seed * 3 + 1) % v)
        .collect();
    let targets = (0..c.seq_len as u32)
        .map(|i| (i * 11 + seed + 5) % v)
        .collect();
    (tokens, targets)
}

/// fp32 mode: the loss within 1e-5 relative; each gradient entry within 1e-4 relative, or
/// 1e-4 of its tensor's largest gradient for entries near zero (a relative error of an entry
/// that is itself rounding noise means nothing).
#[test]
fn fp32_loss_and_every_gradient_match_the_reference() {
    for (kv, tied, qk) in [
        (4, true, false),
        (2, false, false),
        (1, true, false),
        (2, false, true),
        (4, true, true),
    ] {
        let c = with_qk_norm(kv, tied, qk);
        let p = params(&c, 3 + kv as u64);
        let (tokens, targets) = window(&c, kv as u32);
        let (ref_loss, ref_grads) = reference::loss_and_grads(&p, &tokens, &targets);
        for (set, compile) in KERNEL_SETS {
            let (loss, grads) = step_grads(compile, &p, NumericMode::Fp32, &tokens, &targets, 1.0);
            assert!(
                ((loss as f64) - ref_loss).abs() <= 1e-5 * ref_loss,
                "{set}: loss {loss} vs {ref_loss}"
            );
            let mut worst = 0.0f64;
            for spec in &p.layout.tensors {
                let r = spec.range.clone();
                let max = ref_grads[r.clone()]
                    .iter()
                    .fold(0.0f64, |m, g| m.max(g.abs()));
                for i in r {
                    let (got, want) = (grads.data[i] as f64, ref_grads[i]);
                    let err = (got - want).abs() / want.abs().max(max * 1e-2).max(1e-12);
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-4,
                        "{set} kv {kv} tied {tied} qk_norm {qk}: {} entry {}: {got} vs {want} \
                         (relative {err:.2e})",
                        spec.name,
                        i - spec.range.start
                    );
                }
            }
            eprintln!("{set} kv {kv} tied {tied}: worst relative gradient error {worst:.2e}");
        }
    }
}

/// fp16 mode (every tensor rounded to fp16 at each op boundary, loss scale 256): the loss
/// within 1 % and each tensor's gradient within 5 % of its norm (relative L2 error).
#[test]
fn fp16_gradients_are_close_to_the_reference() {
    for qk in [false, true] {
        let c = with_qk_norm(2, true, qk);
        let p = params(&c, 9);
        let (tokens, targets) = window(&c, 1);
        let (ref_loss, ref_grads) = reference::loss_and_grads(&p, &tokens, &targets);
        for (set, compile) in KERNEL_SETS {
            let (loss, grads) =
                step_grads(compile, &p, NumericMode::Fp16, &tokens, &targets, 256.0);
            assert!(
                ((loss as f64) - ref_loss).abs() <= 1e-2 * ref_loss,
                "{set}: loss {loss} vs {ref_loss}"
            );
            for spec in &p.layout.tensors {
                let r = spec.range.clone();
                let diff: f64 = r
                    .clone()
                    .map(|i| (grads.data[i] as f64 - ref_grads[i]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let norm: f64 = r.map(|i| ref_grads[i].powi(2)).sum::<f64>().sqrt();
                assert!(
                    diff <= 5e-2 * norm,
                    "{set} qk_norm {qk}: {}: relative L2 error {:.3}",
                    spec.name,
                    diff / norm
                );
            }
        }
    }
}

/// Positions whose target is ignored (a prompt, padding) add nothing: the loss is the mean over
/// the others and every gradient matches the reference's for the same mask, on both kernel
/// sets; the loss equals the mean of the per-position losses the step gives one target at a
/// time.
#[test]
fn ignored_targets_are_left_out_of_the_loss_and_every_gradient() {
    use anetrain_model::IGNORED_TARGET;
    let c = config(2, false);
    let p = params(&c, 11);
    let (tokens, mut targets) = window(&c, 4);
    let kept: Vec<usize> = (0..c.seq_len).filter(|t| t % 3 == 1 || *t == 10).collect();
    for (t, target) in targets.iter_mut().enumerate() {
        if !kept.contains(&t) {
            *target = IGNORED_TARGET;
        }
    }
    let (ref_loss, ref_grads) = reference::loss_and_grads(&p, &tokens, &targets);
    for (set, compile) in KERNEL_SETS {
        let (loss, grads) = step_grads(compile, &p, NumericMode::Fp32, &tokens, &targets, 1.0);
        assert!(
            ((loss as f64) - ref_loss).abs() <= 1e-5 * ref_loss,
            "{set}: loss {loss} vs {ref_loss}"
        );
        for spec in &p.layout.tensors {
            let r = spec.range.clone();
            let max = ref_grads[r.clone()]
                .iter()
                .fold(0.0f64, |m, g| m.max(g.abs()));
            assert!(max > 0.0, "{}", spec.name);
            for i in r {
                let (got, want) = (grads.data[i] as f64, ref_grads[i]);
                let err = (got - want).abs() / want.abs().max(max * 1e-2).max(1e-12);
                assert!(
                    err <= 1e-4,
                    "{set}: {} entry {}: {got} vs {want}",
                    spec.name,
                    i - spec.range.start
                );
            }
        }
    }
    // The mean over kept positions, each loss taken with only that position kept.
    let mut sum = 0.0f64;
    for &t in &kept {
        let mut one = vec![IGNORED_TARGET; c.seq_len];
        one[t] = targets[t];
        sum += step_grads(
            compile_kernel_set,
            &p,
            NumericMode::Fp32,
            &tokens,
            &one,
            1.0,
        )
        .0 as f64;
    }
    let mean = sum / kept.len() as f64;
    let (masked, _) = step_grads(
        compile_kernel_set,
        &p,
        NumericMode::Fp32,
        &tokens,
        &targets,
        1.0,
    );
    assert!(
        (masked as f64 - mean).abs() <= 1e-5 * mean,
        "{masked} vs {mean}"
    );
    // No target at all: loss 0, no gradient.
    let none = vec![IGNORED_TARGET; c.seq_len];
    let (loss, grads) = step_grads(
        compile_kernel_set,
        &p,
        NumericMode::Fp32,
        &tokens,
        &none,
        1.0,
    );
    assert_eq!(loss, 0.0);
    assert!(grads.data.iter().all(|&g| g == 0.0));
}

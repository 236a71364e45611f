//! The training step's gradients against central finite differences of its own forward loss,
//! on a tiny GQA config in fp32 mode (a quick self-consistency check; the independent reference
//! model is checked in `step_reference.rs`).

use anetrain_device::host_math::HostMath;
use anetrain_device::{CpuDevice, NumericMode};
use anetrain_model::generate::Decoder;
use anetrain_model::step::{
    compile_kernel_set, forward_logits, forward_loss, micro_step, SharedKernel, StepBuffers,
    WeightSnapshot,
};
use anetrain_model::{ModelConfig, ParamLayout, Params};
use std::sync::Arc;

fn tiny(n_kv_heads: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        name: "test".into(),
        dim: 16,
        hidden: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads,
        head_dim: 4,
        vocab: 19,
        seq_len: 8,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: tied,
        qk_norm: false,
    }
}

fn random_params(config: &ModelConfig, seed: u64) -> Params {
    let layout = Arc::new(ParamLayout::new(config));
    let mut p = Params::zeros(layout.clone());
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for spec in &layout.tensors {
        for v in &mut p.data[spec.range.clone()] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            *v = if spec.decay {
                (u * 0.3) as f32
            } else {
                1.0 + (u * 0.2) as f32
            };
        }
    }
    p
}

#[test]
fn gradients_match_finite_differences() {
    for (kv, tied, qk_norm) in [(4, true, false), (2, false, false), (2, true, true)] {
        let config = ModelConfig {
            qk_norm,
            ..tiny(kv, tied)
        };
        let params = random_params(&config, 7 + kv as u64);
        let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
        let clock = anetrain_device::clock::RealClock::new();
        let tokens: Vec<u32> = (0..8).map(|i| (i * 5 + 3) % 19).collect();
        let targets: Vec<u32> = (0..8).map(|i| (i * 7 + 1) % 19).collect();
        let loss_at = |p: &Params| -> f64 {
            let snap = WeightSnapshot {
                version: 0,
                params: Arc::new(p.clone()),
            };
            let mut set = compile_kernel_set(&device, snap).unwrap();
            let mut buf = StepBuffers::new(&config);
            forward_loss(
                &device,
                &clock,
                &mut set,
                &mut buf,
                &tokens,
                &targets,
                HostMath::best_built(1),
            )
            .unwrap() as f64
        };
        let snap = WeightSnapshot {
            version: 0,
            params: Arc::new(params.clone()),
        };
        let mut set = compile_kernel_set(&device, snap).unwrap();
        let mut shared = SharedKernel::compile(&device, &params).unwrap();
        let mut buf = StepBuffers::new(&config);
        let mut grads = Params::zeros(params.layout.clone());
        let (loss, _) = micro_step(
            &device,
            &clock,
            &mut set,
            &mut shared,
            &mut buf,
            &tokens,
            &targets,
            1.0,
            &mut grads,
            HostMath::best_built(1),
        )
        .unwrap();
        assert!((loss as f64 - loss_at(&params)).abs() < 1e-5);
        // Probe a few entries of every tensor.
        for spec in &params.layout.tensors {
            for k in [0, spec.range.len() / 3, spec.range.len() - 1] {
                let i = spec.range.start + k;
                let h = 1e-2f32;
                let (mut pp, mut pm) = (params.clone(), params.clone());
                pp.data[i] += h;
                pm.data[i] -= h;
                let fd = (loss_at(&pp) - loss_at(&pm)) / (2.0 * h as f64);
                let g = grads.data[i] as f64;
                assert!(
                    (fd - g).abs() <= 2e-3 + 2e-2 * fd.abs(),
                    "kv {kv} tied {tied}: {}[{k}]: finite difference {fd}, gradient {g}",
                    spec.name
                );
            }
        }
    }
}

/// The kernels' forward and the host decoder (one token at a time, KV cache, no MIL) agree on
/// every position's logits.
#[test]
fn kernel_forward_matches_the_host_decoder() {
    for (kv, qk_norm) in [(4, false), (2, false), (1, false), (2, true)] {
        let config = ModelConfig {
            qk_norm,
            ..tiny(kv, kv != 2)
        };
        let params = random_params(&config, 11 + kv as u64);
        let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
        let clock = anetrain_device::clock::RealClock::new();
        let tokens: Vec<u32> = (0..8).map(|i| (i * 5 + 3) % 19).collect();
        let snap = WeightSnapshot {
            version: 0,
            params: Arc::new(params.clone()),
        };
        let mut set = compile_kernel_set(&device, snap).unwrap();
        let mut buf = StepBuffers::new(&config);
        let logits = forward_logits(
            &device,
            &clock,
            &mut set,
            &mut buf,
            &tokens,
            HostMath::best_built(1),
        )
        .unwrap();
        let mut dec = Decoder::new(&params);
        for (t, &tok) in tokens.iter().enumerate() {
            let row = dec.step(tok);
            for (v, &want) in row.iter().enumerate() {
                let got = logits[v * 8 + t];
                assert!(
                    (got - want).abs() < 1e-4,
                    "kv {kv} pos {t} vocab {v}: {got} vs {want}"
                );
            }
        }
    }
}

/// An eval failing in the middle of the backward, after weight-gradient products were handed
/// to the helper thread, ends the step with an error naming the kernel (not a hang), and the
/// next step computes the same gradients as a step on a healthy device.
#[test]
fn a_failed_eval_mid_backward_is_an_error_and_leaves_nothing_behind() {
    use anetrain_device::decorate::FaultInjection;
    use anetrain_device::Device;
    use anetrain_model::step::StepError;
    let config = tiny(2, false);
    let params = random_params(&config, 5);
    // `count` micro-steps on one compiled set, each into fresh gradients.
    let steps = |device: &dyn Device, count: usize| -> Vec<Result<Params, StepError>> {
        let clock = anetrain_device::clock::RealClock::new();
        let tokens: Vec<u32> = (0..8).map(|i| (i * 3 + 2) % 19).collect();
        let targets: Vec<u32> = (0..8).map(|i| (i * 5 + 4) % 19).collect();
        let snap = WeightSnapshot {
            version: 0,
            params: Arc::new(params.clone()),
        };
        let mut set = compile_kernel_set(device, snap).unwrap();
        let mut shared = SharedKernel::compile(device, &params).unwrap();
        let mut buf = StepBuffers::new(&config);
        (0..count)
            .map(|_| {
                let mut grads = Params::zeros(params.layout.clone());
                let (set, shared, buf) = (&mut set, &mut shared, &mut buf);
                micro_step(
                    device,
                    &clock,
                    set,
                    shared,
                    buf,
                    &tokens,
                    &targets,
                    1.0,
                    &mut grads,
                    HostMath::best_built(2),
                )
                .map(|_| grads)
            })
            .collect()
    };
    let healthy = CpuDevice::new(NumericMode::Fp32).with_threads(2);
    let want = steps(&healthy, 1).remove(0).unwrap();
    // Two layers: 4 forward evals, then bwd_ffn.1 (after which the FFN weight gradients are
    // queued), then bwd_attn1.1: the 6th eval, which fails.
    let device = CpuDevice::new(NumericMode::Fp32).with_threads(2);
    let failing = FaultInjection::new(device).fail_eval(6);
    let mut results = steps(&failing, 2).into_iter();
    match results.next() {
        Some(Err(StepError::Eval { kernel, .. })) => assert_eq!(kernel, "bwd_attn1.1"),
        other => panic!(
            "expected the failed eval, got {:?}",
            other.map(|r| r.is_ok())
        ),
    }
    let again = results.next().expect("a second step").unwrap();
    assert_eq!(again.data, want.data);
}

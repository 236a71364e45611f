//! Dynamic weight delivery under a latency model on a virtual clock: one compile of kernels
//! that take their weights as inputs, then staging only, every step on the newest weights.
//!
//! The model: every kernel compiles in exactly 10 ms and evaluates in exactly 1 ms of virtual
//! time; host work is free. A two-layer model runs 12 evals per step (per layer fwd_attn,
//! fwd_ffn, bwd_ffn, bwd_attn1, bwd_attn2, bwd_qkv).

mod common;

use anetrain_device::clock::{Clock, SimClock};
use anetrain_device::decorate::{FaultInjection, LatencyModel};
use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_model::init::init_params;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::delivery::Strategy;
use anetrain_train::trainer::{train, Event, StepRecord, TrainOptions, TrainState};
use common::{simulated, test_env, Cycle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Two layers, grouped-query attention, untied classifier.
fn config() -> ModelConfig {
    ModelConfig {
        name: "two-layer".into(),
        dim: 16,
        hidden: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
        vocab: 23,
        seq_len: 8,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: false,
        qk_norm: false,
    }
}

struct Outcome {
    steps: Vec<StepRecord>,
    validations: Vec<f32>,
    state: TrainState,
}

fn run(
    device: &dyn Device,
    clock: &dyn Clock,
    strategy: Strategy,
    steps: u64,
    eval_every: u64,
) -> Outcome {
    let options = TrainOptions {
        steps,
        eval_every,
        checkpoint_every: 0,
        threads: 1,
        ..TrainOptions::default()
    };
    let c = config();
    let mut state = TrainState::new(
        init_params(Arc::new(ParamLayout::new(&c)), 1),
        &options,
        NumericMode::Fp32,
    );
    let env = test_env(device, clock, strategy);
    let mut steps = Vec::new();
    let mut validations = Vec::new();
    train(
        &env,
        &options,
        &mut state,
        &mut Cycle(0),
        None,
        &mut |e| match e {
            Event::Step(r) => steps.push(r.clone()),
            Event::Validation { loss, .. } => validations.push(*loss),
            _ => {}
        },
    )
    .unwrap();
    Outcome {
        steps,
        validations,
        state,
    }
}

fn model(clock: &Arc<SimClock>) -> FaultInjection<LatencyModel<CpuDevice>> {
    FaultInjection::new(simulated(clock, NumericMode::Fp32))
}

#[test]
fn dynamic_compiles_once_never_stalls_and_never_lags() {
    let clock = Arc::new(SimClock::new());
    let device = model(&clock);
    let steps = 6;
    let out = run(&device, &*clock, Strategy::Dynamic, steps, 0);
    // The shared weight-free kernel and one dynamic kernel per weighted kind, whatever the
    // number of layers: 6 compiles, 60 ms, all before the first step.
    assert_eq!(device.compiles(), 6);
    let c = &out.state.counters;
    assert_eq!(c.compiles, 6);
    assert_eq!(c.compile_stall, Duration::from_millis(60));
    assert_eq!(c.background_compile, Duration::ZERO);
    assert_eq!((c.swaps, c.failed_compiles), (0, 0));
    // Every step runs on the newest weights: 12 evals of 1 ms and no wait.
    assert_eq!(c.wall, Duration::from_millis(60 + steps * 12));
    assert!(out.steps.iter().all(|r| r.ms == 12.0), "{:?}", out.steps);
    for r in &out.steps {
        assert_eq!((r.staleness, r.weights_version), (0, r.step - 1));
    }
    assert_eq!(c.staleness, BTreeMap::from([(0, steps)]));
    // Staging is real host work, counted apart from compiles.
    assert!(c.staging > Duration::ZERO);
}

#[test]
fn dynamic_trains_exactly_like_recompile() {
    let run_with = |strategy| {
        let clock = Arc::new(SimClock::new());
        let device = model(&clock);
        run(&device, &*clock, strategy, 5, 2)
    };
    let recompile = run_with(Strategy::Recompile);
    let dynamic = run_with(Strategy::Dynamic);
    // Same weights every step, the same arithmetic: bit for bit.
    let bits = |o: &Outcome| -> Vec<u32> { o.steps.iter().map(|r| r.loss.to_bits()).collect() };
    assert_eq!(bits(&dynamic), bits(&recompile));
    let validation =
        |o: &Outcome| -> Vec<u32> { o.validations.iter().map(|l| l.to_bits()).collect() };
    assert_eq!(validation(&dynamic), validation(&recompile));
    assert_eq!(dynamic.validations.len(), 3);
    assert!(dynamic
        .state
        .params
        .data
        .iter()
        .zip(&recompile.state.params.data)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // The run did train.
    let losses: Vec<f32> = dynamic.steps.iter().map(|r| r.loss).collect();
    assert!(losses[4] < losses[0], "{losses:?}");
}

#[test]
fn dynamic_is_parsed_by_name() {
    assert_eq!("dynamic".parse::<Strategy>(), Ok(Strategy::Dynamic));
    assert_eq!(Strategy::Dynamic.name(), "dynamic");
    let err = "dynamc".parse::<Strategy>().unwrap_err();
    assert!(err.contains("dynamic"), "{err}");
}

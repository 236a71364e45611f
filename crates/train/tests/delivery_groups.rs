//! A double buffer on a chip that cannot hold two whole kernel sets, or in a process whose
//! compile budget cannot pay for two: it swaps groups of layers, stays within the limit, and
//! records each group's weights version.

mod common;

use anetrain_device::ane::{ChipRule, ChipRules, Rule, Severity};
use anetrain_device::clock::SimClock;
use anetrain_device::decorate::{CompileBudget, RuleCheck};
use anetrain_device::{Device, NumericMode};
use anetrain_model::init::init_params;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::delivery::{double_buffer_unit, Strategy, SwapUnit};
use anetrain_train::trainer::{
    train, CheckpointFolder, DeliverySettings, Event, StepRecord, TrainOutcome, TrainSetup,
    TrainState,
};
use common::{checkpoint_folder, short_run, simulated, test_env, Cycle};
use std::sync::Arc;

/// Four layers of 5 weighted kernels: a set is 20 kernels, the shared kernel one more.
fn config() -> ModelConfig {
    ModelConfig {
        name: "four-layer".into(),
        dim: 16,
        hidden: 32,
        n_layers: 4,
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: 8,
        vocab: 23,
        seq_len: 16,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: true,
        qk_norm: false,
    }
}

/// A chip holding at most `limit` kernels loaded, with the common rules otherwise.
fn chip_holding(limit: usize) -> ChipRules {
    ChipRules::new(
        "test chip",
        &[ChipRule {
            rule: Rule::MaxLoadedKernels(limit),
            source: "this test",
            severity: Severity::Refused,
        }],
    )
}

struct Run {
    outcome: TrainOutcome,
    steps: Vec<StepRecord>,
    swaps: Vec<(std::ops::Range<usize>, u64, u64)>,
    failures: Vec<String>,
    state: TrainState,
}

fn run(
    device: &dyn Device,
    clock: &SimClock,
    state: TrainState,
    steps: u64,
    checkpoints: Option<&CheckpointFolder>,
) -> Run {
    let mut state = state;
    let env = TrainSetup {
        delivery: DeliverySettings::new(Strategy::DoubleBuffer),
        ..test_env(device, clock, Strategy::DoubleBuffer)
    };
    let (mut records, mut swaps, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let outcome = train(
        &env,
        &short_run(steps),
        &mut state,
        &mut Cycle(0),
        checkpoints,
        &mut |e| match e {
            Event::Step(r) => records.push(r.clone()),
            Event::GroupSwap {
                step,
                layers,
                version,
            } => swaps.push((layers.clone(), *version, *step)),
            Event::CompileFailed(f) => failures.push(f.clone()),
            _ => {}
        },
    )
    .unwrap();
    Run {
        outcome,
        steps: records,
        swaps,
        failures,
        state,
    }
}

fn fresh(c: &ModelConfig) -> TrainState {
    TrainState::new(
        init_params(Arc::new(ParamLayout::new(c)), 3),
        &short_run(1),
        NumericMode::Fp32,
    )
}

#[test]
fn a_chip_that_cannot_hold_two_sets_gets_groups_of_layers_within_its_limit() {
    let c = config();
    let clock = Arc::new(SimClock::new());
    // 21 loaded, and 11 more: room for two layers' kernels (10), not a whole set (20).
    let device = RuleCheck::new(simulated(&clock, NumericMode::Fp32), chip_holding(32));
    assert_eq!(double_buffer_unit(&device, &c), SwapUnit::Layers(2));
    let out = run(&device, &clock, fresh(&c), 12, None);
    assert_eq!(out.outcome, TrainOutcome::Finished);
    // A compile past the limit would have been refused, and reported here.
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    // A group beside the whole set and the shared kernel: more than one set, never past 32.
    assert!(
        (22..=32).contains(&device.peak_loaded()),
        "{}",
        device.peak_loaded()
    );
    assert_eq!(out.steps.len(), 12);
    assert!(out.swaps.len() >= 4, "{:?}", out.swaps);
    for (layers, version, step) in &out.swaps {
        assert!(*layers == (0..2) || *layers == (2..4), "{layers:?}");
        assert!(
            version <= step && *version >= 1,
            "version {version} before step {step}"
        );
    }
    // Both groups were refreshed, each to newer weights over time.
    for group in [0..2, 2..4] {
        let versions: Vec<u64> = out
            .swaps
            .iter()
            .filter(|(l, ..)| *l == group)
            .map(|(_, v, _)| *v)
            .collect();
        assert!(versions.len() >= 2, "{group:?}: {versions:?}");
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }
    // The oldest layer lags by at most the allowed staleness plus a round of groups less one.
    for r in &out.steps {
        assert!(r.staleness <= 2, "{r:?}");
    }
    assert!(
        out.steps.iter().any(|r| r.staleness == 2),
        "the bound is used"
    );
    assert!(out.steps.iter().all(|r| r.loss.is_finite()));
    assert_eq!(out.state.counters.layers_per_group, Some(2));
    assert_eq!(out.state.counters.group_swaps, out.swaps.len() as u64);
}

#[test]
fn a_budget_that_cannot_pay_for_two_sets_still_moves_on_in_each_process() {
    let c = config();
    // 30 compiles: 21 to start, then a group of one layer (5) at a time.
    let budget_device =
        |clock: &Arc<SimClock>| CompileBudget::new(simulated(clock, NumericMode::Fp32), 30);
    let clock = Arc::new(SimClock::new());
    assert_eq!(
        double_buffer_unit(&budget_device(&clock), &c),
        SwapUnit::Layers(1)
    );
    // Each "process" (a fresh budget) goes on from where the last stopped.
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = checkpoint_folder(dir.path());
    let mut state = fresh(&c);
    let mut processes = 0;
    loop {
        processes += 1;
        assert!(processes <= 12, "no progress: stuck at step {}", state.step);
        let clock = Arc::new(SimClock::new());
        let device = budget_device(&clock);
        let before = state.step;
        let out = run(&device, &clock, state, 8, Some(&checkpoints));
        state = out.state;
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        assert!(device.used() <= 30);
        match out.outcome {
            TrainOutcome::Finished => break,
            TrainOutcome::Restart { step, .. } => {
                // It starts on the newest weights, so it runs until its oldest layer passes
                // the bound (4 updates) and the next group cannot be paid for.
                assert!(
                    step >= before + 4,
                    "only {} updates in a process",
                    step - before
                );
                assert!(out.swaps.iter().all(|(l, ..)| l.len() == 1));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(state.step, 8);
    assert!(processes > 1, "the budget never ran out");
}

//! Compile budget and restart: a run whose device allows only 25 compiles per process
//! checkpoints and continues in a "new process" (a fresh device) several times, and ends with
//! exactly the losses and weights of an uninterrupted run under the same schedule. A
//! double-buffered run stopped and resumed does too.

mod common;

use anetrain_device::clock::{RealClock, SimClock};
use anetrain_device::decorate::CompileBudget;
use anetrain_device::{CpuDevice, NumericMode};
use anetrain_model::init::init_params;
use anetrain_model::{ModelConfig, ParamLayout};
use anetrain_train::checkpoint::{list_checkpoints, Checkpoint};
use anetrain_train::delivery::Strategy;
use anetrain_train::trainer::{
    train, CheckpointFolder, Event, TrainOptions, TrainOutcome, TrainSetup, TrainState,
};
use common::{checkpoint_folder, simulated, test_env, Cycle};
use std::sync::Arc;

fn config() -> ModelConfig {
    ModelConfig {
        name: "one-layer".into(),
        dim: 16,
        hidden: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 8,
        vocab: 23,
        seq_len: 8,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: false,
        qk_norm: false,
    }
}

/// The run's state before its first update: the weights of seed 5.
fn fresh_state(c: &ModelConfig, opts: &TrainOptions) -> TrainState {
    TrainState::new(
        init_params(Arc::new(ParamLayout::new(c)), 5),
        opts,
        NumericMode::Fp32,
    )
}

fn options() -> TrainOptions {
    TrainOptions {
        steps: 12,
        accum: 2,
        eval_every: 4,
        checkpoint_every: 0,
        threads: 1,
        ..TrainOptions::default()
    }
}

#[test]
fn restarts_on_a_spent_budget_end_exactly_like_an_uninterrupted_run() {
    let c = config();
    let opts = options();
    let clock = RealClock::new();
    let checkpoint_dir = tempfile::tempdir().unwrap();
    let checkpoints = checkpoint_folder(checkpoint_dir.path());
    let fresh = || fresh_state(&c, &opts);

    // Uninterrupted: a budget that never runs out.
    let mut reference = fresh();
    let mut ref_losses = Vec::new();
    {
        let device = CompileBudget::new(CpuDevice::new(NumericMode::Fp32).with_threads(1), 10_000);
        let env = test_env(&device, &clock, Strategy::Recompile);
        let outcome = train(&env, &opts, &mut reference, &mut Cycle(0), None, &mut |e| {
            if let Event::Step(r) = e {
                ref_losses.push(r.loss)
            }
        });
        assert_eq!(outcome.unwrap(), TrainOutcome::Finished);
    }

    // With 25 compiles per process: 6 at start (the shared kernel and the first set), then
    // 5 per update, so each process runs 4 updates before the next set cannot be paid for.
    let mut losses = Vec::new();
    let mut restarts = 0;
    let mut state = fresh();
    let mut data = Cycle(0);
    loop {
        let device = CompileBudget::new(CpuDevice::new(NumericMode::Fp32).with_threads(1), 25);
        let env = test_env(&device, &clock, Strategy::Recompile);
        let result = train(
            &env,
            &opts,
            &mut state,
            &mut data,
            Some(&checkpoints),
            &mut |e| {
                if let Event::Step(r) = e {
                    losses.push(r.loss)
                }
            },
        );
        assert!(device.used() <= 25);
        match result {
            Ok(TrainOutcome::Finished) => break,
            Ok(TrainOutcome::Restart { checkpoint, .. }) => {
                restarts += 1;
                // A new process: everything comes back from the checkpoint file.
                let ckpt = Checkpoint::load(&checkpoint).unwrap();
                data = Cycle(ckpt.header.sampler.as_u64().unwrap().try_into().unwrap());
                state = TrainState::from_checkpoint(ckpt).unwrap();
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(restarts, 2, "12 updates at 4 per process");
    assert_eq!(losses, ref_losses);
    assert_eq!(state.params.data, reference.params.data);
    assert_eq!(state.adam, reference.adam);
    // Three processes, each compiling its initial 6 and 3 sets after updates; the 4th update
    // of each finds the budget short (the last one because the run ends).
    assert_eq!(state.counters.compiles, 3 * (6 + 3 * 5));
}

/// A double-buffered run's device runs one version behind its master weights. Stopped after 5
/// updates and resumed from its checkpoint in a "new process", it must run every step on the
/// same version as the uninterrupted run, with and without the delay compensation (which reads
/// the version the device ran on), and end with the same losses and weights.
#[test]
fn a_double_buffered_run_stopped_and_resumed_ends_exactly_like_an_uninterrupted_one() {
    let c = config();
    for compensation in [0.0, 3.0] {
        let opts = TrainOptions {
            delay_compensation: compensation,
            ..options()
        };
        let fresh = || fresh_state(&c, &opts);
        // Each "process" has its own device and virtual clock.
        let run = |state: &mut TrainState,
                   data: &mut Cycle,
                   stop_after: Option<u64>,
                   checkpoints: Option<&CheckpointFolder>,
                   steps: &mut Vec<(f32, u64, u64)>| {
            let clock = Arc::new(SimClock::new());
            let device = simulated(&clock, NumericMode::Fp32);
            let env = TrainSetup {
                stop_after,
                halt: None,
                ..test_env(&device, &*clock, Strategy::DoubleBuffer)
            };
            train(&env, &opts, state, data, checkpoints, &mut |e| {
                if let Event::Step(r) = e {
                    steps.push((r.loss, r.weights_version, r.staleness))
                }
            })
            .unwrap();
        };

        let mut reference = fresh();
        let mut ref_steps = Vec::new();
        run(&mut reference, &mut Cycle(0), None, None, &mut ref_steps);

        let dir = tempfile::tempdir().unwrap();
        let checkpoints = checkpoint_folder(dir.path());
        let mut steps = Vec::new();
        let mut first = fresh();
        run(
            &mut first,
            &mut Cycle(0),
            Some(5),
            Some(&checkpoints),
            &mut steps,
        );
        let (step, path) = list_checkpoints(dir.path()).pop().expect("a checkpoint");
        assert_eq!(step, 5);
        let ckpt = Checkpoint::load(&path).unwrap();
        assert_eq!(
            ckpt.header.device_version,
            Some(4),
            "the device ran one version behind"
        );
        let mut data = Cycle(ckpt.header.sampler.as_u64().unwrap().try_into().unwrap());
        let mut resumed = TrainState::from_checkpoint(ckpt).unwrap();
        run(
            &mut resumed,
            &mut data,
            None,
            Some(&checkpoints),
            &mut steps,
        );

        assert!(ref_steps[1..].iter().all(|s| s.2 == 1), "{ref_steps:?}");
        assert_eq!(steps, ref_steps, "compensation {compensation}");
        assert_eq!(resumed.params.data, reference.params.data);
        assert_eq!(resumed.adam, reference.adam);
    }
}

/// The double buffer under a compile budget: each "process" (a fresh device and virtual
/// clock) compiles its start-up kernels and then sets in the background until the next set
/// cannot be paid for, checkpoints and continues in a new one. Every step runs on the same
/// weights version as in an uninterrupted run, with the same loss, and the run ends with the
/// same weights.
#[test]
fn a_double_buffered_run_restarted_by_its_budget_ends_exactly_like_an_uninterrupted_one() {
    let c = config();
    let opts = options();
    let fresh = || fresh_state(&c, &opts);
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = checkpoint_folder(dir.path());
    let run = |state: &mut TrainState,
               data: &mut Cycle,
               budget: u64,
               steps: &mut Vec<(f32, u64, u64)>| {
        let clock = Arc::new(SimClock::new());
        let device = CompileBudget::new(simulated(&clock, NumericMode::Fp32), budget);
        let env = test_env(&device, &*clock, Strategy::DoubleBuffer);
        let result = train(&env, &opts, state, data, Some(&checkpoints), &mut |e| {
            if let Event::Step(r) = e {
                steps.push((r.loss, r.weights_version, r.staleness))
            }
        });
        assert!(device.used() <= budget);
        result
    };

    let mut reference = fresh();
    let mut ref_steps = Vec::new();
    let outcome = run(&mut reference, &mut Cycle(0), 10_000, &mut ref_steps);
    assert_eq!(outcome.unwrap(), TrainOutcome::Finished);

    let mut steps = Vec::new();
    let mut state = fresh();
    let mut data = Cycle(0);
    let mut restarts = 0;
    while let TrainOutcome::Restart { checkpoint, .. } =
        run(&mut state, &mut data, 25, &mut steps).unwrap()
    {
        restarts += 1;
        assert!(restarts < 10, "the run does not progress");
        let ckpt = Checkpoint::load(&checkpoint).unwrap();
        data = Cycle(ckpt.header.sampler.as_u64().unwrap().try_into().unwrap());
        state = TrainState::from_checkpoint(ckpt).unwrap();
    }
    assert!(restarts >= 2, "{restarts} restarts");
    assert!(ref_steps[1..].iter().all(|s| s.2 == 1), "{ref_steps:?}");
    assert_eq!(steps, ref_steps);
    assert_eq!(state.params.data, reference.params.data);
    assert_eq!(state.adam, reference.adam);
}

/// A failed eval may latch the ANE for the life of the process: the run checkpoints the update
/// it was part of undone and restarts. The new process runs that update again and ends exactly
/// like an uninterrupted run; a second failure at the same update stops the run.
#[test]
fn a_failed_eval_restarts_the_process_and_the_update_runs_again() {
    use anetrain_device::decorate::FaultInjection;
    use anetrain_train::trainer::{RestartReason, TrainError};
    let c = config();
    let opts = options();
    let clock = RealClock::new();
    let fresh = || fresh_state(&c, &opts);
    let run = |device: &dyn anetrain_device::Device,
               state: &mut TrainState,
               data: &mut Cycle,
               checkpoints: Option<&CheckpointFolder>,
               losses: &mut Vec<f32>| {
        let env = test_env(device, &clock, Strategy::Recompile);
        train(&env, &opts, state, data, checkpoints, &mut |e| {
            if let Event::Step(r) = e {
                losses.push(r.loss)
            }
        })
    };
    let mut reference = fresh();
    let mut ref_losses = Vec::new();
    let cpu = || CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let outcome = run(&cpu(), &mut reference, &mut Cycle(0), None, &mut ref_losses);
    assert_eq!(outcome.unwrap(), TrainOutcome::Finished);

    // Eval 40 falls in the 4th update (2 windows of 6 evals each per update).
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = checkpoint_folder(dir.path());
    let (mut state, mut data, mut losses) = (fresh(), Cycle(0), Vec::new());
    let faulty = FaultInjection::new(cpu()).fail_eval(40);
    let outcome = run(
        &faulty,
        &mut state,
        &mut data,
        Some(&checkpoints),
        &mut losses,
    );
    let Ok(TrainOutcome::Restart {
        step,
        checkpoint,
        reason: RestartReason::EvalFailed(why),
    }) = outcome
    else {
        panic!("expected a restart for the failed eval, got {outcome:?}");
    };
    assert_eq!(step, 3);
    assert!(why.contains("evaluating kernel"), "{why}");
    assert_eq!(losses.len(), 3);
    // The new process: everything from the checkpoint, a device that works.
    let ckpt = Checkpoint::load(&checkpoint).unwrap();
    let mut data = Cycle(ckpt.header.sampler.as_u64().unwrap().try_into().unwrap());
    let mut state = TrainState::from_checkpoint(ckpt).unwrap();
    assert_eq!(state.counters.eval_failure_restart, Some(3));
    let outcome = run(
        &cpu(),
        &mut state,
        &mut data,
        Some(&checkpoints),
        &mut losses,
    );
    assert_eq!(outcome.unwrap(), TrainOutcome::Finished);
    assert_eq!(losses, ref_losses);
    assert_eq!(state.params.data, reference.params.data);

    // Failing again at the update that restarted the process stops the run.
    let ckpt = Checkpoint::load(&checkpoint).unwrap();
    let mut data = Cycle(ckpt.header.sampler.as_u64().unwrap().try_into().unwrap());
    let mut state = TrainState::from_checkpoint(ckpt).unwrap();
    let faulty = FaultInjection::new(cpu()).fail_eval(1);
    let outcome = run(
        &faulty,
        &mut state,
        &mut data,
        Some(&checkpoints),
        &mut Vec::new(),
    );
    assert!(matches!(outcome, Err(TrainError::Step(_))), "{outcome:?}");
}

/// A caller that raises the halt (its metrics log failed) stops the run after the update it
/// is in, with a checkpoint that resumes to the uninterrupted result; a halt raised during
/// the last update lets the run finish.
#[test]
fn a_halt_stops_after_the_update_with_a_checkpoint_that_resumes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = config();
    let opts = options();
    let clock = RealClock::new();
    let fresh = || fresh_state(&c, &opts);
    let cpu = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let mut reference = fresh();
    let env = test_env(&cpu, &clock, Strategy::Recompile);
    let outcome = train(
        &env,
        &opts,
        &mut reference,
        &mut Cycle(0),
        None,
        &mut |_| {},
    );
    assert_eq!(outcome.unwrap(), TrainOutcome::Finished);

    let dir = tempfile::tempdir().unwrap();
    let checkpoints = checkpoint_folder(dir.path());
    let halt = AtomicBool::new(false);
    let halting = TrainSetup {
        halt: Some(&halt),
        ..test_env(&cpu, &clock, Strategy::Recompile)
    };
    let mut state = fresh();
    let outcome = train(
        &halting,
        &opts,
        &mut state,
        &mut Cycle(0),
        Some(&checkpoints),
        &mut |e| {
            if matches!(e, Event::Step(r) if r.step == 5) {
                halt.store(true, Ordering::SeqCst);
            }
        },
    );
    let Ok(TrainOutcome::Halted {
        step: 5,
        checkpoint: Some(path),
    }) = outcome
    else {
        panic!("expected a halt after update 5, got {outcome:?}");
    };
    let ckpt = Checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.header.step, 5);
    let mut data = Cycle(ckpt.header.sampler.as_u64().unwrap().try_into().unwrap());
    let mut state = TrainState::from_checkpoint(ckpt).unwrap();
    // Raised again in the last update, the halt has nothing left to stop.
    halt.store(false, Ordering::SeqCst);
    let outcome = train(
        &halting,
        &opts,
        &mut state,
        &mut data,
        Some(&checkpoints),
        &mut |e| {
            if matches!(e, Event::Step(r) if r.step == 12) {
                halt.store(true, Ordering::SeqCst);
            }
        },
    );
    assert_eq!(outcome.unwrap(), TrainOutcome::Finished);
    assert_eq!(state.params.data, reference.params.data);
}

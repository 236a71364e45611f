//! Weight delivery under a latency model on a virtual clock: exact swaps, stalls, staleness
//! and failure handling, with no timing assertions on real hardware.
//!
//! The model: every kernel compiles in exactly 10 ms and evaluates in exactly 1 ms of virtual
//! time; host work is free. A one-layer model runs 6 evals per step (fwd_attn, fwd_ffn,
//! bwd_ffn, bwd_attn1, bwd_attn2, bwd_qkv), so a step takes 6 ms, and a kernel set (5 weighted
//! kernels) takes 50 ms to compile.

mod common;

use anetrain_device::clock::{Clock, RealClock, SimClock};
use anetrain_device::decorate::{FaultInjection, LatencyModel};
use anetrain_device::host_math::HostMath;
use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_model::init::init_params;
use anetrain_model::optim::{clip_factor, grad_norm, AdamState, LrSchedule};
use anetrain_model::step::{
    compile_kernel_set, micro_step, KernelSet, SharedKernel, StepBuffers, WeightSnapshot,
};
use anetrain_model::{ModelConfig, ParamLayout, Params};

use anetrain_train::checkpoint::Checkpoint;
use anetrain_train::delivery::Strategy;
use anetrain_train::trainer::{
    train, validation_loss, DeliverySettings, Event, StepRecord, TrainError, TrainOptions,
    TrainOutcome, TrainSetup, TrainState, WindowSource,
};
use common::{checkpoint_folder, simulated, test_env, Cycle};
use std::sync::Arc;
use std::time::Duration;

fn config() -> ModelConfig {
    ModelConfig {
        name: "one-layer".into(),
        dim: 16,
        hidden: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: 8,
        vocab: 23,
        seq_len: 8,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: true,
        qk_norm: false,
    }
}

struct Outcome {
    steps: Vec<StepRecord>,
    state: TrainState,
    failures: Vec<String>,
    result: Result<(), String>,
}

fn run(
    device: &dyn Device,
    clock: &dyn Clock,
    strategy: Strategy,
    max_staleness: u64,
    steps: u64,
) -> Outcome {
    let options = TrainOptions {
        steps,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 1,
        ..TrainOptions::default()
    };
    run_with(device, clock, strategy, max_staleness, &options)
}

fn run_with(
    device: &dyn Device,
    clock: &dyn Clock,
    strategy: Strategy,
    max_staleness: u64,
    options: &TrainOptions,
) -> Outcome {
    let options = options.clone();
    let c = config();
    // The device's numeric mode decides the loss scaling, as in a real run.
    let mut state = TrainState::new(
        init_params(Arc::new(ParamLayout::new(&c)), 1),
        &options,
        device.info().numeric,
    );
    let env = TrainSetup {
        delivery: DeliverySettings {
            max_staleness,
            ..DeliverySettings::new(strategy)
        },
        ..test_env(device, clock, strategy)
    };
    let mut records = Vec::new();
    let mut failures = Vec::new();
    let result = train(
        &env,
        &options,
        &mut state,
        &mut Cycle(0),
        None,
        &mut |e| match e {
            Event::Step(r) => records.push(r.clone()),
            Event::CompileFailed(f) => failures.push(f.clone()),
            _ => {}
        },
    )
    .map_err(|e| e.to_string())
    .and_then(|outcome| match outcome {
        TrainOutcome::Finished => Ok(()),
        restart => Err(format!("{restart:?}")),
    });
    Outcome {
        steps: records,
        state,
        failures,
        result,
    }
}

fn model(clock: &Arc<SimClock>) -> LatencyModel<CpuDevice> {
    simulated(clock, NumericMode::Fp32)
}

#[test]
fn recompile_stalls_for_every_set_and_never_lags() {
    let clock = Arc::new(SimClock::new());
    let device = model(&clock);
    let out = run(&device, &*clock, Strategy::Recompile, 1, 5);
    out.result.unwrap();
    assert!(out.steps.iter().all(|r| r.staleness == 0));
    // Each step's own record: its 6 evals, and the compile of the next set after its update.
    for r in &out.steps {
        assert_eq!((r.eval_ms, r.stall_ms), (6.0, 50.0), "step {}", r.step);
        // One eval of each kernel (one layer), each 1 ms on the model.
        let by_kernel: Vec<(&str, f64)> = r
            .eval_ms_by_kernel
            .iter()
            .map(|(k, &ms)| (k.as_str(), ms))
            .collect();
        assert_eq!(
            by_kernel,
            [
                ("bwd_attn1", 1.0),
                ("bwd_attn2", 1.0),
                ("bwd_ffn", 1.0),
                ("bwd_qkv", 1.0),
                ("fwd_attn", 1.0),
                ("fwd_ffn", 1.0)
            ],
            "step {}",
            r.step
        );
    }
    // Initial compile (6 kernels, 60 ms), then per step 6 ms of evals and 50 ms of compile.
    assert_eq!(
        out.state.counters.compile_stall,
        Duration::from_millis(60 + 5 * 50)
    );
    assert_eq!(
        out.state.counters.startup_compile,
        Duration::from_millis(60)
    );
    assert_eq!(out.state.counters.wall, Duration::from_millis(60 + 5 * 56));
    // Nothing compiled in the background.
    assert_eq!(out.state.counters.background_compile_cpu, Duration::ZERO);
}

#[test]
fn double_buffer_with_staleness_one_waits_for_each_compile() {
    let clock = Arc::new(SimClock::new());
    let device = model(&clock);
    let out = run(&device, &*clock, Strategy::DoubleBuffer, 1, 6);
    out.result.unwrap();
    let lags: Vec<u64> = out.steps.iter().map(|r| r.staleness).collect();
    // Step 1 runs on the initial weights; from step 2 on, the device lags by exactly one.
    assert_eq!(lags, vec![0, 1, 1, 1, 1, 1]);
    let versions: Vec<u64> = out.steps.iter().map(|r| r.weights_version).collect();
    assert_eq!(versions, vec![0, 0, 1, 2, 3, 4]);
    let stalls: Vec<f64> = out.steps.iter().map(|r| r.stall_ms).collect();
    assert_eq!(stalls, vec![0.0, 0.0, 44.0, 44.0, 44.0, 44.0]);
    // From step 3 on, each boundary waits for a compile that started one step (6 ms) earlier:
    // 50 − 6 = 44 ms of stall each.
    assert_eq!(
        out.state.counters.compile_stall,
        Duration::from_millis(60 + 4 * 44)
    );
    assert_eq!(out.state.counters.swaps, 4);
    // The four compiles really ran on this host's CPU, whatever the model says they took
    // (thread CPU time is measured on Linux only).
    let cpu = out.state.counters.background_compile_cpu;
    if cfg!(target_os = "linux") {
        assert!(cpu > Duration::ZERO);
    }
    assert!(cpu < out.state.counters.background_compile, "{cpu:?}");
}

#[test]
fn double_buffer_with_room_to_lag_never_stalls() {
    let clock = Arc::new(SimClock::new());
    let device = model(&clock);
    let out = run(&device, &*clock, Strategy::DoubleBuffer, 100, 30);
    out.result.unwrap();
    // Only the initial compile stalls.
    assert_eq!(out.state.counters.compile_stall, Duration::from_millis(60));
    assert_eq!(
        out.state.counters.startup_compile,
        Duration::from_millis(60)
    );
    // Compiles of versions 1, 10 and 19 finish at the boundaries before steps 11, 20 and 29
    // (each takes 50 ms, just over 8 steps of 6 ms; the newest weights are taken each time).
    let versions: Vec<u64> = out.steps.iter().map(|r| r.weights_version).collect();
    let expect: Vec<u64> = (1..=30)
        .map(|k| match k {
            1..=10 => 0,
            11..=19 => 1,
            20..=28 => 10,
            _ => 19,
        })
        .collect();
    assert_eq!(versions, expect);
    for r in &out.steps {
        assert_eq!(r.staleness, r.step - 1 - r.weights_version);
    }
    assert_eq!(out.state.counters.swaps, 3);
}

#[test]
fn a_failed_background_compile_keeps_the_active_set_and_is_retried() {
    let clock = Arc::new(SimClock::new());
    // Compiles 1..=6 are the initial ones (shared kernel and the first set); compile 7 is the
    // first kernel of the first background set.
    let device = FaultInjection::new(model(&clock)).fail_compile(7);
    let out = run(&device, &*clock, Strategy::DoubleBuffer, 1, 6);
    out.result.unwrap();
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    assert!(
        out.failures[0].contains("injected fault"),
        "{:?}",
        out.failures
    );
    assert_eq!(out.state.counters.failed_compiles, 1);
    // The failed compile of version 1 ended (10 ms in) and was retried with version 2; the
    // device never ran on a partial set: every step's version is one the trainer published.
    for r in &out.steps {
        assert!(r.weights_version < r.step);
    }
    assert!(out.steps.iter().all(|r| r.staleness <= 1));
}

/// An eval that fails mid-step stops the run with the kernel named, and the update of that
/// step is never applied: the weights are those after the steps before it.
#[test]
fn a_failed_eval_stops_the_run_before_its_update() {
    let clock = Arc::new(SimClock::new());
    // 6 evals per step with one layer: eval 15 is step 3's third, the backward FFN, after
    // the forward and before the weight gradients are complete.
    let device = FaultInjection::new(model(&clock)).fail_eval(15);
    let out = run(&device, &*clock, Strategy::Recompile, 1, 6);
    let err = out.result.unwrap_err();
    assert!(err.contains("injected fault"), "{err}");
    assert!(err.contains("bwd_ffn.0"), "the kernel is named: {err}");
    assert_eq!(out.steps.len(), 2);
    assert_eq!(out.state.step, 2);

    let clean_clock = Arc::new(SimClock::new());
    let clean = run(
        &model(&clean_clock),
        &*clean_clock,
        Strategy::Recompile,
        1,
        2,
    );
    clean.result.unwrap();
    assert_eq!(out.state.params.data, clean.state.params.data);
}

/// A set whose third kernel fails is not half swapped in: the two kernels that compiled are
/// thrown away with it, the device keeps running the whole old set, and the next version's
/// set replaces it whole. Under the 10 ms/1 ms model version 1's set fails 20 ms in (its
/// third kernel fails at once) while step 2 runs on version 0; step 3 would lag by 2, so it
/// waits for the retry, which compiles version 2, and runs on it: 0, 0, 2, 2, 3, 4.
#[test]
fn a_set_that_fails_in_the_middle_is_never_used_in_part() {
    let clock = Arc::new(SimClock::new());
    let device = FaultInjection::new(model(&clock)).fail_compile(9);
    let out = run(&device, &*clock, Strategy::DoubleBuffer, 1, 6);
    out.result.unwrap();
    assert_eq!(out.state.counters.failed_compiles, 1);
    let ran_on: Vec<u64> = out.steps.iter().map(|r| r.weights_version).collect();
    assert_eq!(ran_on, vec![0, 0, 2, 2, 3, 4]);
    // Swaps: to versions 2, 3 and 4, each set whole.
    assert_eq!(out.state.counters.swaps, 3);
    // The failed set used three compiles, not a set's five: the run counts what the device did.
    assert_eq!(out.state.counters.compiles, device.compiles());
}

#[test]
fn repeated_compile_failures_stop_the_run_with_an_error() {
    let clock = Arc::new(SimClock::new());
    let mut device = FaultInjection::new(model(&clock));
    for k in 7..200 {
        device = device.fail_compile(k);
    }
    let out = run(&device, &*clock, Strategy::DoubleBuffer, 1, 20);
    let err = out.result.unwrap_err();
    assert!(err.contains("injected fault"), "{err}");
    // Every failure is reported; the third in a row ends the run.
    assert_eq!(out.failures.len(), 3, "{:?}", out.failures);
    assert!(out.steps.len() < 20);
}

/// The run that stops on failed compiles keeps what it trained: a checkpoint of the updates
/// done, named in the error, from which `--resume` continues.
#[test]
fn repeated_compile_failures_checkpoint_the_run_before_it_stops() {
    let clock = Arc::new(SimClock::new());
    let mut device = FaultInjection::new(model(&clock));
    for k in 17..200 {
        device = device.fail_compile(k);
    }
    let options = TrainOptions {
        steps: 20,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 1,
        ..TrainOptions::default()
    };
    let mut state = fresh_state(&options);
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = checkpoint_folder(dir.path());
    let env = test_env(&device, &*clock, Strategy::DoubleBuffer);
    let mut saved = Vec::new();
    let err = train(
        &env,
        &options,
        &mut state,
        &mut Cycle(0),
        Some(&checkpoints),
        &mut |e| {
            if let Event::Checkpoint { step, path } = e {
                saved.push((*step, path.clone()))
            }
        },
    )
    .unwrap_err();
    let TrainError::CompileFailures {
        step, checkpoint, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(*step > 0 && *step < 20, "stopped at {step}");
    assert_eq!(*step, state.step);
    let path = checkpoint.as_ref().expect("a checkpoint");
    assert_eq!(saved, vec![(*step, path.clone())]);
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let ckpt = Checkpoint::load(path).unwrap();
    assert_eq!(ckpt.header.step, *step);
    assert_eq!(ckpt.params.data, state.params.data);
    // The device was still running an older set: the checkpoint keeps its weights too.
    assert!(ckpt.header.device_version.is_some_and(|v| v < *step));
}

#[test]
fn delay_corrections_keep_delayed_training_closer_to_synchronous_training() {
    // Every double-buffered step runs one update behind (the compile fits in a step), so the
    // only difference a correction makes is to the gradient or to the weights of stale sets.
    let options = |compensation: f32, prediction: bool| TrainOptions {
        steps: 40,
        lr: 1e-2,
        min_lr: Some(1e-2),
        warmup: 0,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 1,
        delay_compensation: compensation,
        weight_prediction: prediction,
        ..TrainOptions::default()
    };
    let go = |strategy: Strategy, compensation: f32, prediction: bool| {
        let clock = Arc::new(SimClock::new());
        let device = model(&clock);
        run_with(
            &device,
            &*clock,
            strategy,
            1,
            &options(compensation, prediction),
        )
    };
    // The defaults compensate: recompile's steps are never stale, so λ has nothing to act on.
    let sync = go(
        Strategy::Recompile,
        TrainOptions::default().delay_compensation,
        false,
    );
    assert_eq!(sync.result, Ok(()));
    assert_eq!(
        sync.steps.iter().map(|r| r.loss).collect::<Vec<_>>(),
        go(Strategy::Recompile, 0.0, false)
            .steps
            .iter()
            .map(|r| r.loss)
            .collect::<Vec<_>>()
    );
    let delayed = go(Strategy::DoubleBuffer, 0.0, false);
    let loss_gap = |o: &Outcome| {
        o.steps
            .iter()
            .zip(&sync.steps)
            .map(|(a, b)| (a.loss - b.loss).abs() as f64)
            .sum::<f64>()
    };
    let late_loss = |o: &Outcome| o.steps[20..].iter().map(|r| r.loss as f64).sum::<f64>() / 20.0;
    let versions = |o: &Outcome| {
        o.steps
            .iter()
            .map(|r| r.weights_version)
            .collect::<Vec<_>>()
    };
    // Delay compensation is left out here: on this toy's steady, noise-free gradients its
    // curvature estimate g² is far too large and it makes things worse at any strength that
    // helps real text (see `TrainOptions::delay_compensation`); `bench weights` measures it.
    let (name, corrected) = ("prediction", go(Strategy::DoubleBuffer, 0.0, true));
    {
        assert_eq!(corrected.result, Ok(()));
        assert!(
            corrected.steps[1..].iter().all(|r| r.staleness == 1),
            "{name}"
        );
        // A correction changes gradients or weights, not the bookkeeping of versions.
        assert_eq!(versions(&corrected), versions(&delayed), "{name}");
        // Per-step losses follow the synchronous run's more closely, and training gets further.
        let (gap_delayed, gap) = (loss_gap(&delayed), loss_gap(&corrected));
        assert!(
            gap < 0.85 * gap_delayed,
            "{name}: summed loss gap to synchronous {gap}, uncorrected {gap_delayed}"
        );
        assert!(
            late_loss(&corrected) < late_loss(&delayed),
            "{name}: mean loss of steps 21-40 {}, uncorrected {}",
            late_loss(&corrected),
            late_loss(&delayed)
        );
    }
}

#[test]
fn double_buffered_updates_apply_each_stale_gradient_to_the_newest_master_weights() {
    // The run under test: K = 1, no correction, so step t's gradient is computed on the
    // weights of the version it ran on and applied to the master weights of version t.
    let clock = Arc::new(SimClock::new());
    let device = model(&clock);
    let options = TrainOptions {
        steps: 6,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 1,
        delay_compensation: 0.0,
        weight_prediction: false,
        ..TrainOptions::default()
    };
    let out = run_with(&device, &*clock, Strategy::DoubleBuffer, 1, &options);
    out.result.unwrap();
    let ran_on: Vec<u64> = out.steps.iter().map(|r| r.weights_version).collect();
    assert_eq!(ran_on, vec![0, 0, 1, 2, 3, 4]);

    // The same schedule by hand, keeping every version: a kernel set per version the run
    // used, the gradient from it, plain AdamW on the master weights.
    let c = config();
    let cpu = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let mut versions = vec![Arc::new(init_params(Arc::new(ParamLayout::new(&c)), 1))];
    let mut master = (*versions[0]).clone();
    let mut adam = AdamState::new(&master);
    let schedule = schedule_of(&options);
    let mut shared = SharedKernel::compile(&cpu, &master).unwrap();
    let mut buf = StepBuffers::new(&c);
    let mut data = Cycle(0);
    for (t, &v) in ran_on.iter().enumerate() {
        let snapshot = WeightSnapshot {
            version: v,
            params: versions[v as usize].clone(),
        };
        let mut set = compile_kernel_set(&cpu, snapshot).unwrap();
        let grads = window_gradient(&cpu, &mut set, &mut shared, &mut buf, &mut data);
        let scale = clip_factor(grad_norm(&grads), options.clip);
        let lr = schedule.at(t as u64);
        options
            .adam
            .update_scaled(&mut master, &grads, scale, &mut adam, lr);
        versions.push(Arc::new(master.clone()));
    }
    assert_eq!(out.state.params.data, master.data);
    assert_eq!(out.state.adam, adam);
}

/// The gradient of the next window of `data` alone (from zero, loss scale 1), as the
/// hand-computed schedules take it.
fn window_gradient(
    cpu: &CpuDevice,
    set: &mut KernelSet,
    shared: &mut SharedKernel,
    buf: &mut StepBuffers,
    data: &mut Cycle,
) -> Params {
    let s = config().seq_len;
    let mut window = vec![0u32; s + 1];
    data.next_train_window(&mut window);
    let mut grads = Params::zeros(set.snapshot().params.layout.clone());
    micro_step(
        cpu,
        &RealClock::new(),
        set,
        shared,
        buf,
        &window[..s],
        &window[1..],
        1.0,
        &mut grads,
        HostMath::best_built(1),
    )
    .unwrap();
    grads
}

/// The one-layer model's initial fp32 training state (seed 1).
fn fresh_state(options: &TrainOptions) -> TrainState {
    TrainState::new(
        init_params(Arc::new(ParamLayout::new(&config())), 1),
        options,
        NumericMode::Fp32,
    )
}

/// The learning-rate schedule a run with `options` follows, for steps computed by hand.
fn schedule_of(options: &TrainOptions) -> LrSchedule {
    LrSchedule {
        max_lr: options.lr,
        min_lr: options.min_lr(),
        warmup: options.warmup,
        total: options.steps,
    }
}

/// 40 fp16 steps under `strategy` with a loss scale (2^40) far too large for the gradients.
fn overflowing_fp16_run(strategy: Strategy) -> Outcome {
    let clock = Arc::new(SimClock::new());
    let device = simulated(&clock, NumericMode::Fp16);
    let options = TrainOptions {
        steps: 40,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 1,
        loss_scale: 2f32.powi(40),
        ..TrainOptions::default()
    };
    let out = run_with(&device, &*clock, strategy, 1, &options);
    assert_eq!(out.result, Ok(()));
    out
}

/// fp16 with a loss scale far too large: updates are skipped (and the scale halved) until the
/// gradients fit. Under double-buffering with delay compensation the steps run one version
/// behind, so the overflow must be caught by the compensation's own pass over the gradient,
/// which also measures the norm: skipped steps there too, then finite updates.
#[test]
fn overflowing_fp16_gradients_skip_updates_under_delay_compensation() {
    assert!(
        TrainOptions::default().delay_compensation > 0.0,
        "compensation is on by default"
    );
    let out = overflowing_fp16_run(Strategy::DoubleBuffer);
    let (records, state) = (out.steps, out.state);

    let skipped: Vec<&StepRecord> = records.iter().filter(|r| r.skipped).collect();
    assert!(
        skipped.iter().any(|r| r.staleness == 1),
        "an overflow while running one version behind (compensated) was skipped"
    );
    for r in &skipped {
        assert!(
            r.grad_norm.is_nan(),
            "step {}: a skipped step reports no norm",
            r.step
        );
    }
    // Each skip halves the scale; the run ends with updates that applied.
    let scales: Vec<f32> = skipped.iter().map(|r| r.loss_scale).collect();
    assert!(scales.windows(2).all(|w| w[1] < w[0]), "{scales:?}");
    let applied: Vec<&StepRecord> = records.iter().filter(|r| !r.skipped).collect();
    assert!(
        applied
            .iter()
            .any(|r| r.staleness == 1 && r.grad_norm.is_finite()),
        "compensated updates applied once the scale fit"
    );
    assert_eq!(state.counters.skipped_updates, skipped.len() as u64);
    assert!(state.params.data.iter().all(|w| w.is_finite()));
}

/// The same overflow under synchronous recompilation, where the overflow check is the norm's
/// own pass (no compensation): updates are skipped with the scale halved each time until the
/// gradients fit, and a skipped update leaves the weights exactly as they were.
#[test]
fn overflowing_fp16_gradients_skip_updates_under_recompile() {
    let out = overflowing_fp16_run(Strategy::Recompile);
    let records = out.steps;
    let skipped: Vec<&StepRecord> = records.iter().filter(|r| r.skipped).collect();
    assert!(skipped.len() >= 2, "{} skipped", skipped.len());
    // Each skip halves the scale: the scales reported by consecutive skips halve.
    for w in skipped.windows(2) {
        if w[1].step == w[0].step + 1 {
            assert_eq!(w[1].loss_scale, w[0].loss_scale / 2.0);
        }
    }
    assert!(skipped.iter().all(|r| r.grad_norm.is_nan()));
    // Nothing was applied while skipping: the first applied update comes after every skip of
    // the initial overflow, and the weights version only moves with applied updates.
    let applied = records.iter().filter(|r| !r.skipped).count() as u64;
    assert!(
        applied > 0
            && records
                .iter()
                .filter(|r| !r.skipped)
                .all(|r| r.grad_norm.is_finite())
    );
    assert_eq!(out.state.counters.skipped_updates, skipped.len() as u64);
    assert_eq!(out.state.counters.skipped_updates + applied, 40);
    assert!(out.state.params.data.iter().all(|w| w.is_finite()));
    // A skipped step runs on the same kernel set as the one after it: no new weights.
    for (a, b) in records.iter().zip(&records[1..]) {
        if a.skipped {
            assert_eq!(b.weights_version, a.weights_version, "step {}", a.step);
        }
    }
}

/// Gradient accumulation: an update with `accum` windows applies the mean of the windows'
/// gradients, each computed from zero here and averaged in f64 (so neither an overwrite nor a
/// missing division would pass), and reports that mean's norm.
#[test]
fn accumulated_updates_apply_the_mean_gradient_of_their_windows() {
    let clock = Arc::new(SimClock::new());
    let device = model(&clock);
    let accum = 3;
    let options = TrainOptions {
        steps: 3,
        accum,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 1,
        ..TrainOptions::default()
    };
    let out = run_with(&device, &*clock, Strategy::Recompile, 1, &options);
    out.result.unwrap();

    let c = config();
    let cpu = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let mut master = init_params(Arc::new(ParamLayout::new(&c)), 1);
    let mut adam = AdamState::new(&master);
    let schedule = schedule_of(&options);
    let mut shared = SharedKernel::compile(&cpu, &master).unwrap();
    let mut buf = StepBuffers::new(&c);
    let mut data = Cycle(0);
    for (t, record) in out.steps.iter().enumerate() {
        let snapshot = WeightSnapshot {
            version: t as u64,
            params: Arc::new(master.clone()),
        };
        let mut set = compile_kernel_set(&cpu, snapshot).unwrap();
        let mut sum = vec![0f64; master.data.len()];
        for _ in 0..accum {
            let grads = window_gradient(&cpu, &mut set, &mut shared, &mut buf, &mut data);
            for (s, g) in sum.iter_mut().zip(&grads.data) {
                *s += *g as f64;
            }
        }
        let mut mean = Params::zeros(master.layout.clone());
        for (m, s) in mean.data.iter_mut().zip(&sum) {
            *m = (s / accum as f64) as f32;
        }
        let norm = grad_norm(&mean);
        assert!(
            (record.grad_norm - norm).abs() <= 1e-5 * norm,
            "step {}: norm {} reported, {norm} by hand",
            t + 1,
            record.grad_norm
        );
        let lr = schedule.at(t as u64);
        options.adam.update_scaled(
            &mut master,
            &mean,
            clip_factor(norm, options.clip),
            &mut adam,
            lr,
        );
    }
    let worst = out
        .state
        .params
        .data
        .iter()
        .zip(&master.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "weights differ by up to {worst}");
}

/// A double-buffered run's device runs one update behind. Its mid-run validations evaluate
/// that set and say so; the last one evaluates the weights the run ends with, exactly as a
/// kernel set compiled from them afterwards does.
#[test]
fn the_last_validation_of_a_double_buffered_run_is_of_its_final_weights() {
    let clock = Arc::new(SimClock::new());
    let device = model(&clock);
    let options = TrainOptions {
        steps: 6,
        eval_every: 3,
        eval_windows: 1,
        checkpoint_every: 0,
        threads: 1,
        ..TrainOptions::default()
    };
    let mut state = fresh_state(&options);
    let env = test_env(&device, &*clock, Strategy::DoubleBuffer);
    let mut validations = Vec::new();
    let mut data = Cycle(0);
    train(&env, &options, &mut state, &mut data, None, &mut |e| {
        if let Event::Validation {
            step,
            loss,
            weights_version,
        } = e
        {
            validations.push((*step, *loss, *weights_version))
        }
    })
    .unwrap();
    assert_eq!(validations.len(), 2);
    // Step 3 ran on version 1 (steps run on 0, 0, 1, 2, ...), and that set is still active.
    assert_eq!(
        (validations[0].0, validations[0].2),
        (3, 1),
        "mid-run: the running set"
    );
    assert_eq!(
        (validations[1].0, validations[1].2),
        (6, 6),
        "the end: the master"
    );

    let cpu = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let mut set = compile_kernel_set(
        &cpu,
        WeightSnapshot {
            version: 6,
            params: state.params.clone(),
        },
    )
    .unwrap();
    let expected = validation_loss(
        &cpu,
        &RealClock::new(),
        &mut set,
        &mut StepBuffers::new(&config()),
        &data,
        &options,
        config().seq_len,
    )
    .unwrap();
    assert_eq!(validations[1].1, expected);
}

//! The training loop: micro-steps with gradient accumulation, loss scaling, clipping, AdamW
//! and the schedule, validation, checkpoints, and the delivery of new weights to the device.

use crate::checkpoint::{save_rotating, Checkpoint, CheckpointError, CheckpointHeader};
use crate::delivery::{Delivery, DeliveryStats, Strategy};
use crate::run::RunSettings;
use crate::tokenizer::TokenizerKind;
use anetrain_device::clock::Clock;
use anetrain_device::cpu::simd::vectorised;
use anetrain_device::{Device, NumericMode};
use anetrain_model::kernels::KernelKind;
use anetrain_model::optim::{
    clip_factor, grad_norm, sum_squares, zero_all, AdamState, AdamW, LossScaler, LrSchedule,
    PARALLEL_CHUNK,
};
use anetrain_model::step::{
    forward_loss, micro_step, KernelSet, SharedKernel, StepBuffers, StepError, StepTiming,
    WeightSnapshot,
};
use anetrain_model::{ModelConfig, Params};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Everything that shapes a run besides the model and the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Optimizer updates.
    pub steps: u64,
    /// Micro-steps (windows) per update.
    pub accum: u32,
    /// Peak learning rate.
    pub lr: f32,
    /// Where the cosine decay ends (default: a tenth of `lr`); see [`TrainOptions::min_lr`].
    pub min_lr: Option<f32>,
    pub warmup: u64,
    pub clip: f32,
    pub adam: AdamW,
    pub seed: u64,
    /// Validation every this many updates (0: never).
    pub eval_every: u64,
    /// Validation windows per evaluation.
    pub eval_windows: usize,
    /// Checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Initial loss scale in fp16 (dynamic afterwards); fp32 runs use 1.
    pub loss_scale: f32,
    /// Delay compensation for steps that ran on stale weights (0: off). With c > 0 the
    /// gradient g, computed at the stale weights w_s, is corrected towards the master weights
    /// w by DC-ASGD's first-order term with the adaptive step of its "-a" variant (Zheng et
    /// al., ICML 2017): g + λ·g⊙g⊙(w − w_s)/(√max(v, g²) + ε), v being AdamW's second moment,
    /// and λ = c / lr (the peak learning rate).
    ///
    /// Why λ scales with 1/lr: under AdamW, w − w_s is about one learning rate per
    /// coordinate, so the paper's SGD-sized λ (≈ 1) changes nothing, and a fixed large λ
    /// overcorrects at a higher learning rate. On `tiny` at lr 3e-3, c from 2.4 to 9 brought
    /// double-buffer's validation loss to recompile's (`bench weights`), so the default is 3.
    /// It is not universal: on a 16-dim toy with steady, noise-free gradients (g² then
    /// overstates the curvature) it made delayed training worse at every c ≥ 0.3, which is why
    /// the correction is clamped and why 0 turns it off. Only double-buffered steps that ran
    /// behind the master weights are corrected.
    pub delay_compensation: f32,
    /// Weight prediction for double-buffered runs: each background compile bakes in the
    /// weights the master is predicted to reach by the time the set runs (the staleness the
    /// last step ran at, in AdamW updates with the last gradient), not the master weights.
    /// See [`AdamW::predict`].
    pub weight_prediction: bool,
    pub threads: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 4000,
            accum: 1,
            lr: 3e-3,
            min_lr: None,
            warmup: 100,
            clip: 1.0,
            adam: AdamW::default(),
            seed: 42,
            eval_every: 250,
            eval_windows: 16,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            loss_scale: 256.0,
            delay_compensation: 3.0,
            weight_prediction: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl TrainOptions {
    /// The learning rate at the end of the cosine decay: as set, or a tenth of the peak (so
    /// that a run configured with only `lr` decays in proportion).
    pub fn min_lr(&self) -> f32 {
        self.min_lr.unwrap_or(self.lr / 10.0)
    }

    /// Refuses options no run can use, naming the option (as its TOML key) and the value. A
    /// negative learning rate or β past 1 would otherwise train to NaN without a word.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("lr", self.lr),
            ("clip", self.clip),
            ("loss_scale", self.loss_scale),
            ("adam.eps", self.adam.eps),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, not {v}"));
            }
        }
        let non_negative = [
            ("min_lr", self.min_lr()),
            ("adam.weight_decay", self.adam.weight_decay),
            ("delay_compensation", self.delay_compensation),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be zero or more, not {v}"));
            }
        }
        for (name, v) in [
            ("adam.beta1", self.adam.beta1),
            ("adam.beta2", self.adam.beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{name} must be in [0, 1), not {v}"));
            }
        }
        if self.min_lr() > self.lr {
            return Err(format!(
                "min_lr ({}) must not exceed lr ({})",
                self.min_lr(),
                self.lr
            ));
        }
        for (name, v) in [
            ("accum", self.accum as u64),
            ("threads", self.threads as u64),
            ("keep_checkpoints", self.keep_checkpoints as u64),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.eval_every > 0 && self.eval_windows == 0 {
            return Err("eval_windows must be at least 1 when eval_every is set".into());
        }
        Ok(())
    }
}

pub use crate::data::{ValidationSource, WindowSource};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Other(String),
    #[error("training options: {0}")]
    Options(String),
    /// The device's compile budget is spent; the run was checkpointed and must continue in a
    /// new process (`--resume`).
    #[error("compile budget exhausted after step {step}: checkpoint {} written, restart to continue", checkpoint.display())]
    Restart { step: u64, checkpoint: PathBuf },
    /// Background compiles failed `--max-compile-failures` times in a row; the run was
    /// checkpointed first when it has a run folder.
    #[error("{source} (the run stopped before step {}{})", step + 1, checkpoint.as_ref().map_or(String::new(), |p| format!("; checkpoint {} written: continue with --resume", p.display())))]
    CompileFailures {
        step: u64,
        source: Box<StepError>,
        checkpoint: Option<PathBuf>,
    },
}

/// Counters that survive restarts (carried in checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub wall: Duration,
    /// Time training waited for compiles, the start-up compiles included.
    pub compile_stall: Duration,
    /// The part of `compile_stall` spent compiling the first sets of each process (the run's
    /// start and every restart): there is nothing to evaluate yet, whatever the strategy.
    pub startup_compile: Duration,
    pub compiles: u64,
    pub train: Duration,
    pub device_eval: Duration,
    pub host_math: Duration,
    /// Weight-gradient products (on a helper thread, overlapping the device evals).
    pub weight_grads: Duration,
    /// What the steps waited for their weight gradients after their last eval.
    pub weight_grad_wait: Duration,
    pub optimizer: Duration,
    pub tokens: u64,
    pub skipped_updates: u64,
    pub background_compile: Duration,
    /// CPU time of the background compiles (see `DeliveryStats::background_compile_cpu`).
    pub background_compile_cpu: Duration,
    /// Host work: staging new weights into the kernels' inputs (dynamic delivery).
    pub staging: Duration,
    pub swaps: u64,
    pub failed_compiles: u64,
    /// Steps by how many updates the device weights lagged.
    pub staleness: std::collections::BTreeMap<u64, u64>,
}

impl Counters {
    /// The compile stall after the start-up compiles, and its share in percent of the wall time
    /// after them: the part of the stall the weight-delivery strategy decides (the start-up
    /// compile is the same for every strategy, and a short run cannot amortise it).
    pub fn stall_after_startup(&self) -> (Duration, f64) {
        let stall = self.compile_stall.saturating_sub(self.startup_compile);
        let wall = self.wall.saturating_sub(self.startup_compile);
        (
            stall,
            100.0 * stall.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        )
    }
}

/// What the loop reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Compiled {
        kernels: usize,
        took: Duration,
    },
    Step(StepRecord),
    Validation {
        step: u64,
        loss: f32,
        /// The weights version evaluated (the master's at the end of the schedule).
        weights_version: u64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    /// A background compile failed; the active kernels stay in place and it is retried.
    CompileFailed(String),
    /// A stretch of the training thread's own work between steps or inside one (the
    /// optimizer update, a validation, the host math between a step's evals), on the run's
    /// clock: for timelines.
    HostWork {
        name: &'static str,
        start: Duration,
        end: Duration,
    },
}

/// One update's metrics (a line of metrics.jsonl).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub loss_scale: f32,
    pub skipped: bool,
    pub tokens_per_s: f64,
    pub ms: f64,
    /// When the step started on the run's clock, in seconds (for timelines).
    pub start_s: f64,
    /// The weight version the device ran this step on, and how many updates it lagged.
    pub weights_version: u64,
    pub staleness: u64,
    /// Where the step's time went (ms): device evals; host math, with the time the step
    /// waited for the weight-gradient helper; the optimizer; and waits for compiles (under
    /// `recompile`, the compile itself).
    #[serde(default)]
    pub eval_ms: f64,
    #[serde(default)]
    pub host_ms: f64,
    #[serde(default)]
    pub optimizer_ms: f64,
    #[serde(default)]
    pub stall_ms: f64,
    /// `eval_ms` by kernel (`fwd_attn`, …, summed over layers and windows).
    #[serde(default)]
    pub eval_ms_by_kernel: BTreeMap<String, f64>,
}

/// The mutable state of a run (what a checkpoint holds besides the data sampler).
pub struct TrainState {
    pub config: ModelConfig,
    /// The master weights, shared with the snapshot of the kernel set made from them (an
    /// update copies them only if a set still holds the old ones).
    pub params: Arc<Params>,
    pub adam: AdamState,
    pub step: u64,
    pub scaler: LossScaler,
    pub counters: Counters,
    /// The weights the device runs its next step on when they lag the master weights (a
    /// double-buffered run), kept in checkpoints: a resumed run starts its device on them and
    /// compiles the master weights in the background, as the uninterrupted run would.
    pub device_weights: Option<WeightSnapshot>,
}

impl TrainState {
    pub fn new(params: Params, options: &TrainOptions, mode: NumericMode) -> TrainState {
        let scaler = match mode {
            NumericMode::Fp32 => LossScaler::fixed(),
            NumericMode::Fp16 => LossScaler::new(options.loss_scale),
        };
        TrainState {
            config: params.layout.config.clone(),
            adam: AdamState::new(&params),
            params: Arc::new(params),
            step: 0,
            scaler,
            counters: Counters::default(),
            device_weights: None,
        }
    }

    pub fn from_checkpoint(c: Checkpoint) -> Result<TrainState, TrainError> {
        let h = c.header;
        Ok(TrainState {
            config: h.config,
            params: Arc::new(c.params),
            adam: c.adam,
            step: h.step,
            scaler: h.loss_scale,
            counters: h.counters,
            device_weights: h
                .device_version
                .zip(c.device_weights)
                .map(|(version, params)| WeightSnapshot {
                    version,
                    params: Arc::new(params),
                }),
        })
    }

    pub fn checkpoint(
        &self,
        options: &TrainOptions,
        sampler: serde_json::Value,
        tokenizer_kind: TokenizerKind,
        tokenizer: Vec<u8>,
    ) -> Checkpoint {
        Checkpoint {
            header: CheckpointHeader {
                config: self.config.clone(),
                step: self.step,
                options: options.clone(),
                sampler,
                loss_scale: self.scaler.clone(),
                counters: self.counters.clone(),
                tokenizer_kind,
                device_version: self.device_weights.as_ref().map(|w| w.version),
                run: None,
            },
            tokenizer,
            params: (*self.params).clone(),
            adam: self.adam.clone(),
            device_weights: self.device_weights.as_ref().map(|w| (*w.params).clone()),
        }
    }
}

/// Where checkpoints go and what tokenizer they embed.
pub struct CheckpointFolder {
    pub dir: PathBuf,
    pub tokenizer_kind: TokenizerKind,
    pub tokenizer: Vec<u8>,
    /// Kept in every checkpoint's header as `run` (see [`CheckpointHeader::run`]).
    pub run: RunSettings,
}

/// How the run delivers weights to the device, and on what clock it is timed.
pub struct RunEnv<'a> {
    pub device: &'a dyn Device,
    pub clock: &'a dyn Clock,
    pub strategy: Strategy,
    pub max_staleness: u64,
    /// Consecutive failed background compiles before the run stops with an error.
    pub max_failures: u32,
    /// On a virtual clock, whether host work (which really runs) also spends virtual time.
    /// On for honest simulated reports; off for tests that need exact virtual timelines.
    pub count_host_time: bool,
    /// Stop (with a checkpoint) once this many updates are done, though the schedule is
    /// longer; `--resume` continues it.
    pub stop_after: Option<u64>,
}

/// Runs the loop from `state.step` to `options.steps`.
pub fn train(
    env: &RunEnv<'_>,
    options: &TrainOptions,
    state: &mut TrainState,
    data: &mut dyn WindowSource,
    checkpoints: Option<&CheckpointFolder>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), TrainError> {
    options.check().map_err(TrainError::Options)?;
    let (device, clock) = (env.device, env.clock);
    let config = state.config.clone();
    let s = config.seq_len;
    let schedule = LrSchedule {
        max_lr: options.lr,
        min_lr: options.min_lr(),
        warmup: options.warmup,
        total: options.steps,
    };
    let started = clock.now();
    let wall_before = state.counters.wall;
    let mut buf = StepBuffers::new(&config);
    let mut grads = Params::zeros(state.params.layout.clone());
    let mut window = vec![0u32; s + 1];

    // A process must at least afford the kernels it starts on (the shared kernel and one set);
    // otherwise every restart would fail the same way.
    let needed = SharedKernel::COMPILES as u64 + env.strategy.kernels_per_set(&config);
    if let Some(budget) = device.compile_budget() {
        if budget.remaining() < needed {
            return Err(TrainError::Other(format!(
                "the compile budget ({} of {} compiles left in this process) cannot pay for the \
                 kernels a run of `{}` starts on ({needed} with --weights {}): raise \
                 --compile-budget",
                budget.remaining(),
                budget.budget,
                config.name,
                env.strategy.name()
            )));
        }
    }
    let t = clock.now();
    let mut shared = SharedKernel::compile(device, &state.params)?;
    // A double-buffered run resumed from a checkpoint starts its device on the version the
    // checkpointed run was running, and compiles the master weights in the background below.
    let resumed_behind = match env.strategy {
        Strategy::DoubleBuffer | Strategy::Frozen => state.device_weights.take(),
        Strategy::Recompile | Strategy::Dynamic => None,
    }
    .filter(|w| w.version < state.step);
    let initial = env.strategy.compile_initial(
        device,
        resumed_behind.clone().unwrap_or_else(|| snapshot(state)),
    )?;
    let set_size = initial.compiled_kernels() as u64;
    let took = clock.now().saturating_sub(t);
    state.counters.compile_stall += took;
    state.counters.startup_compile += took;
    state.counters.compiles += SharedKernel::COMPILES as u64 + set_size;
    on_event(&Event::Compiled {
        kernels: SharedKernel::COMPILES + set_size as usize,
        took,
    });

    std::thread::scope(|scope| -> Result<(), TrainError> {
        let mut delivery = Delivery::new(
            env.strategy,
            scope,
            device,
            clock,
            initial,
            env.max_staleness,
            env.max_failures,
        )
        .counting_host_time(env.count_host_time);
        if resumed_behind.is_some() && env.strategy == Strategy::DoubleBuffer {
            // What the checkpointed run was compiling when it stopped: the master weights.
            // (With weight prediction it was compiling a prediction, which the checkpoint
            // does not keep: that run resumes close to, not exactly like, the original.)
            delivery.publish(snapshot(state))?;
        }
        let result = run_steps(
            env,
            options,
            state,
            data,
            checkpoints,
            on_event,
            &schedule,
            &mut delivery,
            &mut shared,
            &mut buf,
            &mut grads,
            &mut window,
            started,
            wall_before,
        );
        delivery.drain();
        state.counters = with_delivery(&state.counters, &delivery.stats);
        result
    })?;
    state.counters.wall = wall_before + clock.now().saturating_sub(started);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_steps(
    env: &RunEnv<'_>,
    options: &TrainOptions,
    state: &mut TrainState,
    data: &mut dyn WindowSource,
    checkpoints: Option<&CheckpointFolder>,
    on_event: &mut dyn FnMut(&Event),
    schedule: &LrSchedule,
    delivery: &mut Delivery<'_, '_>,
    shared: &mut SharedKernel,
    buf: &mut StepBuffers,
    grads: &mut Params,
    window: &mut [u32],
    started: Duration,
    wall_before: Duration,
) -> Result<(), TrainError> {
    let (device, clock) = (env.device, env.clock);
    let s = state.config.seq_len;
    let accum = options.accum.max(1);
    let end = env
        .stop_after
        .map_or(options.steps, |s| s.min(options.steps));
    let mut retired = RetiredVersions::default();
    while state.step < end {
        let step_start = clock.now();
        let stall_before = delivery.stats.stall;
        let acquired = delivery.acquire(state.step).map(|_| ());
        for failure in std::mem::take(&mut delivery.failures) {
            on_event(&Event::CompileFailed(failure));
        }
        if let Err(source) = acquired {
            // Compiles failed too often in a row: keep what was trained before stopping.
            let checkpoint = match checkpoints {
                Some(checkpoints) => Some(save_checkpoint(
                    state,
                    options,
                    data,
                    checkpoints,
                    delivery,
                    on_event,
                )?),
                None => None,
            };
            return Err(TrainError::CompileFailures {
                step: state.step,
                source: Box::new(source),
                checkpoint,
            });
        }
        if delivery.restart_needed() {
            // The budget cannot pay for the compile of the master weights (the kernel set a
            // recompile needs, or the one a double buffer would overlap with this step). The
            // one place a run restarts is here, before the step: the device's version and the
            // master's are then all a new process needs to run it exactly as this one would
            // have (its first compile is that same one). One step later, the master would
            // have moved on and the blocked version would be lost. (Once the schedule or
            // `--stop-after` is done the loop does not come back here: nothing to restart.)
            return Err(restart_checkpoint(
                state,
                options,
                data,
                checkpoints,
                delivery,
                on_event,
            )?);
        }
        let set = delivery.active();
        let ran_on = set.version();
        let train_start = clock.now();
        zero_all(grads);
        let mut loss_sum = 0.0f64;
        let mut timing = StepTiming::new(clock);
        for _ in 0..accum {
            data.next_train_window(window);
            let (loss, t) = micro_step(
                device,
                clock,
                set,
                shared,
                buf,
                &window[..s],
                &window[1..],
                state.scaler.scale,
                grads,
                options.threads,
            )?;
            loss_sum += loss as f64;
            timing.add(&t);
        }
        // On a virtual clock host work has no length where it ran (it is added below).
        for span in timing.host_spans.iter().filter(|s| s.end > s.start) {
            on_event(&Event::HostWork {
                name: span.name,
                start: span.start,
                end: span.end,
            });
        }
        // Host work really ran; on a virtual clock it still takes its time (the weight
        // gradients only as far as the evals did not hide them).
        if clock.is_simulated() && env.count_host_time {
            clock.sleep(timing.host_math + timing.weight_grad_wait);
        }
        let train_time = clock.now().saturating_sub(train_start);
        let opt_start = Instant::now();
        let opt_span_start = clock.now();
        // The gradients carry the scale they were computed at, whatever the scaler does next.
        let scale = state.scaler.scale;
        let unscale = 1.0 / (accum as f32 * scale);
        let lr = schedule.at(state.step);
        let mut norm = f32::NAN;
        // What the update multiplied the gradient by (unscaling and clipping).
        let mut applied_scale = 1.0;
        // Only delayed updates are corrected (frozen kernels are a baseline, not a run).
        let double_buffered = env.strategy == Strategy::DoubleBuffer;
        let predict = options.weight_prediction && double_buffered;
        let compensate = options.delay_compensation > 0.0 && double_buffered && ran_on < state.step;
        // One pass over the gradient measures its norm, which is finite exactly when every
        // gradient is (squares of f32 summed in f64 cannot overflow): the fp16 overflow check.
        // Delay compensation rewrites the gradient in that same pass, unscaled and corrected
        // (a non-finite gradient stays non-finite through it), and measures the corrected
        // norm. Otherwise unscaling and clipping ride into the update (and the prediction),
        // which saves two passes over every gradient.
        let (finite, measured_norm, mut grad_scale) = if compensate {
            let stale = delivery.active().snapshot().params.clone();
            let corrected =
                compensate_delay(grads, unscale, &state.params, &stale, &state.adam, options);
            (corrected.is_finite(), corrected, 1.0)
        } else {
            let raw = grad_norm(grads);
            (raw.is_finite(), raw * unscale, unscale)
        };
        let apply = state.scaler.observe(finite);
        if apply {
            norm = measured_norm;
            grad_scale *= clip_factor(norm, options.clip);
            applied_scale = grad_scale;
            delivery.release_before_update();
            let adam = &options.adam;
            match Arc::get_mut(&mut state.params) {
                Some(params) => adam.update_scaled(params, grads, grad_scale, &mut state.adam, lr),
                None => {
                    // A kernel set (or its compile) still holds these weights: the new version
                    // goes into the buffer of one no set holds any more, in the pass that
                    // computes it, instead of into a copy made first.
                    let mut next = retired
                        .take_free()
                        .unwrap_or_else(|| Params::zeros(state.params.layout.clone()));
                    adam.update_scaled_from(
                        &state.params,
                        &mut next,
                        grads,
                        grad_scale,
                        &mut state.adam,
                        lr,
                    );
                    retired.retire(std::mem::replace(&mut state.params, Arc::new(next)));
                }
            }
        } else {
            state.counters.skipped_updates += 1;
        }
        state.step += 1;
        let optimizer = opt_start.elapsed();
        if clock.is_simulated() && env.count_host_time {
            clock.sleep(optimizer);
        }
        on_event(&Event::HostWork {
            name: "optimizer",
            start: opt_span_start,
            end: clock.now(),
        });
        if apply {
            let next = if predict {
                let horizon = (state.step - 1).saturating_sub(ran_on).max(1);
                let lr = schedule.at(state.step);
                predicted_snapshot(state, grads, applied_scale, options, lr, horizon)
            } else {
                snapshot(state)
            };
            delivery.publish(next)?;
        }

        let c = &mut state.counters;
        c.train += train_time;
        c.device_eval += timing.device_eval;
        c.host_math += timing.host_math;
        c.weight_grads += timing.weight_grads;
        c.weight_grad_wait += timing.weight_grad_wait;
        c.optimizer += optimizer;
        let tokens = (s * accum as usize) as u64;
        c.tokens += tokens;
        let step_time = clock.now().saturating_sub(step_start);
        let master_before = state.step - 1;
        on_event(&Event::Step(StepRecord {
            step: state.step,
            loss: (loss_sum / accum as f64) as f32,
            lr,
            grad_norm: norm,
            loss_scale: state.scaler.scale,
            skipped: !apply,
            tokens_per_s: tokens as f64 / step_time.as_secs_f64().max(1e-12),
            ms: step_time.as_secs_f64() * 1e3,
            start_s: step_start.as_secs_f64(),
            weights_version: ran_on,
            staleness: master_before.saturating_sub(ran_on),
            eval_ms: ms(timing.device_eval),
            host_ms: ms(timing.host_math + timing.weight_grad_wait),
            optimizer_ms: ms(optimizer),
            stall_ms: ms(delivery.stats.stall.saturating_sub(stall_before)),
            eval_ms_by_kernel: KernelKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), ms(timing.eval_by_kernel[k.index()])))
                .collect(),
        }));

        let last = state.step == end;
        if options.eval_every > 0 && (state.step % options.eval_every == 0 || last) {
            // The schedule's last validation is of the weights the run ends with. Earlier
            // ones evaluate the set the device runs (a double buffer's lags the master), and
            // say which version that is: waiting for the master's compile mid-run would
            // change the delivery timeline the run is measured on.
            let set = if state.step == options.steps {
                delivery.catch_up(state.step)?
            } else {
                delivery.active()
            };
            let weights_version = set.version();
            let start = clock.now();
            let loss = validation_loss(device, clock, set, buf, data, options, s)?;
            on_event(&Event::HostWork {
                name: "validation",
                start,
                end: clock.now(),
            });
            on_event(&Event::Validation {
                step: state.step,
                loss,
                weights_version,
            });
        }
        state.counters.wall = wall_before + clock.now().saturating_sub(started);
        let due = options.checkpoint_every > 0 && state.step % options.checkpoint_every == 0;
        if let Some(checkpoints) = checkpoints {
            if due || last {
                save_checkpoint(state, options, data, checkpoints, delivery, on_event)?;
            }
        }
    }
    Ok(())
}

/// Checkpoints the run for a restart in a new process (the compile budget is spent) and
/// returns the error that tells the caller to restart.
fn restart_checkpoint(
    state: &mut TrainState,
    options: &TrainOptions,
    data: &mut dyn WindowSource,
    checkpoints: Option<&CheckpointFolder>,
    delivery: &Delivery<'_, '_>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainError, TrainError> {
    let Some(checkpoints) = checkpoints else {
        return Err(TrainError::Other(format!(
            "the compile budget is spent after step {} and there is no run folder to checkpoint to",
            state.step
        )));
    };
    let checkpoint = save_checkpoint(state, options, data, checkpoints, delivery, on_event)?;
    Ok(TrainError::Restart {
        step: state.step,
        checkpoint,
    })
}

/// Writes a checkpoint of the run as it stands, with the weights the device runs the next
/// step on when they lag the master's, and reports it.
fn save_checkpoint(
    state: &mut TrainState,
    options: &TrainOptions,
    data: &mut dyn WindowSource,
    checkpoints: &CheckpointFolder,
    delivery: &Delivery<'_, '_>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<PathBuf, TrainError> {
    let next = delivery.next_weights(state.step);
    state.device_weights = (next.version < state.step).then(|| next.clone());
    let mut ckpt = state.checkpoint(
        options,
        data.state(),
        checkpoints.tokenizer_kind,
        checkpoints.tokenizer.clone(),
    );
    ckpt.header.counters = with_delivery(&state.counters, &delivery.stats);
    ckpt.header.run = Some(checkpoints.run.clone());
    let path = save_rotating(&ckpt, &checkpoints.dir, options.keep_checkpoints)?;
    on_event(&Event::Checkpoint {
        step: state.step,
        path: path.clone(),
    });
    Ok(path)
}

/// DC-ASGD-a: moves a gradient computed at stale weights towards the gradient at the master
/// weights with the diagonal of the outer-product approximation of the Hessian, clamped so
/// that no gradient changes sign or more than doubles. The gradient is first multiplied by
/// `unscale` (the loss scale and accumulation undone), in the same pass; returns the norm of
/// the result.
fn compensate_delay(
    grads: &mut Params,
    unscale: f32,
    master: &Params,
    stale: &Params,
    adam: &AdamState,
    options: &TrainOptions,
) -> f32 {
    let lambda = options.delay_compensation / options.lr;
    let eps = options.adam.eps;
    let chunks = grads
        .data
        .par_chunks_mut(PARALLEL_CHUNK)
        .zip(master.data.par_chunks(PARALLEL_CHUNK))
        .zip(stale.data.par_chunks(PARALLEL_CHUNK))
        .zip(adam.v.data.par_chunks(PARALLEL_CHUNK));
    // Chunk sums in order, added serially: the norm must not depend on the split (see
    // `grad_norm`).
    let partial: Vec<f64> = chunks
        .map(|(((g, w), ws), v)| {
            vectorised(
                #[inline(always)]
                || compensate_chunk(g, w, ws, v, unscale, lambda, eps),
            )
        })
        .collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

/// One chunk of [`compensate_delay`]; returns the chunk's Σ g² after the correction.
#[inline(always)]
fn compensate_chunk(
    g: &mut [f32],
    w: &[f32],
    ws: &[f32],
    v: &[f32],
    unscale: f32,
    lambda: f32,
    eps: f32,
) -> f64 {
    for (((g, w), ws), v) in g.iter_mut().zip(w).zip(ws).zip(v) {
        *g *= unscale;
        // The mean square includes the current gradient, so a gradient appearing for the
        // first time (v still 0) cannot blow the correction up.
        let rms = v.max(*g * *g).sqrt();
        // g + λ·g²·Δw/rms = g·(1 + λ·g·Δw/rms). The diagonal g² is a rough stand-in for the
        // curvature, so the correction is trusted only as far as it keeps the gradient's
        // sign and at most doubles it: unclamped, it overturned steady gradients at a high
        // learning rate and training diverged.
        let factor = 1.0 + lambda * *g * (w - ws) / (rms + eps);
        *g *= factor.clamp(0.0, 2.0);
    }
    sum_squares(g)
}

/// The run's counters with what delivery has done in this process added.
fn with_delivery(c: &Counters, stats: &DeliveryStats) -> Counters {
    let mut c = c.clone();
    c.compile_stall += stats.stall;
    c.background_compile += stats.background_compile;
    c.background_compile_cpu += stats.background_compile_cpu;
    c.staging += stats.staging;
    c.compiles += stats.kernels_compiled;
    c.swaps += stats.swaps;
    c.failed_compiles += stats.failed_compiles;
    for (lag, n) in &stats.staleness {
        *c.staleness.entry(*lag).or_default() += n;
    }
    c
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The master weights' earlier versions, whose buffers the next update writes into once no
/// kernel set, compile or waiting snapshot holds them (double-buffer). With room to lag, a
/// version can stay held for several updates (the set running on it, the one compiling, the
/// newest one waiting); a fresh buffer each time instead has to be faulted in (Stories110M:
/// 440 MB; its simulated run's updates took 1.2 s into fresh buffers, 0.15 s into reused ones).
#[derive(Default)]
struct RetiredVersions(Vec<Arc<Params>>);

impl RetiredVersions {
    /// A buffer nothing else holds, if there is one.
    fn take_free(&mut self) -> Option<Params> {
        let free = self.0.iter().position(|p| Arc::strong_count(p) == 1)?;
        Arc::try_unwrap(self.0.swap_remove(free)).ok()
    }

    /// Keeps `version` until it is free, and at most one free buffer besides.
    fn retire(&mut self, version: Arc<Params>) {
        self.0.push(version);
        let mut free = 0;
        self.0.retain(|p| {
            let held = Arc::strong_count(p) > 1;
            free += usize::from(!held);
            held || free <= 1
        });
    }
}

fn snapshot(state: &TrainState) -> WeightSnapshot {
    WeightSnapshot {
        version: state.step,
        params: state.params.clone(),
    }
}

/// The weights the master is predicted to reach `horizon` updates from now, under the
/// master's version: what a set compiled now will be closest to when it runs.
fn predicted_snapshot(
    state: &TrainState,
    last_grads: &Params,
    grad_scale: f32,
    options: &TrainOptions,
    lr: f32,
    horizon: u64,
) -> WeightSnapshot {
    let params = options.adam.predict(
        &state.params,
        &state.adam,
        last_grads,
        grad_scale,
        lr,
        horizon as f32,
    );
    WeightSnapshot {
        version: state.step,
        params: Arc::new(params),
    }
}

/// Mean loss over the validation windows.
pub fn validation_loss(
    device: &dyn Device,
    clock: &dyn Clock,
    set: &mut KernelSet,
    buf: &mut StepBuffers,
    data: &(impl ValidationSource + ?Sized),
    options: &TrainOptions,
    s: usize,
) -> Result<f32, StepError> {
    let n = options
        .eval_windows
        .min(data.validation_window_count())
        .max(1);
    let mut window = vec![0u32; s + 1];
    let mut sum = 0.0f64;
    for i in 0..n {
        data.validation_window(i, &mut window);
        sum += forward_loss(
            device,
            clock,
            set,
            buf,
            &window[..s],
            &window[1..],
            options.threads,
        )? as f64;
    }
    Ok((sum / n as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_model::optim::scale_all;
    use anetrain_model::ParamLayout;

    #[test]
    fn the_stall_after_start_up_is_a_share_of_the_wall_after_it() {
        let c = Counters {
            wall: Duration::from_secs(10),
            compile_stall: Duration::from_secs(3),
            startup_compile: Duration::from_secs(1),
            ..Counters::default()
        };
        // 2 s of the 9 s after start-up.
        let (stall, share) = c.stall_after_startup();
        assert_eq!(stall, Duration::from_secs(2));
        assert!((share - 200.0 / 9.0).abs() < 1e-9, "{share}");
        assert_eq!(
            Counters::default().stall_after_startup(),
            (Duration::ZERO, 0.0)
        );
    }

    /// A retired version's buffer comes back only once nothing else holds it, the same buffer
    /// (not a copy), and no more than one free buffer is kept.
    #[test]
    fn retired_versions_give_back_only_buffers_nothing_holds() {
        let layout = Arc::new(ParamLayout::new(&ModelConfig::tiny()));
        let version = |v: f32| {
            let mut p = Params::zeros(layout.clone());
            p.data[0] = v;
            Arc::new(p)
        };
        let mut retired = RetiredVersions::default();
        let (one, two) = (version(1.0), version(2.0));
        let (held_one, held_two) = (one.clone(), two.clone());
        retired.retire(one);
        retired.retire(two);
        assert!(retired.take_free().is_none(), "both are held");
        drop(held_two);
        let at = held_one.data.as_ptr();
        drop(held_one);
        // Both are free now; one is taken, the other stays.
        let first = retired.take_free().expect("a free buffer");
        let second = retired.take_free().expect("another free buffer");
        assert!(retired.take_free().is_none());
        let mut values = [first.data[0], second.data[0]];
        values.sort_by(f32::total_cmp);
        assert_eq!(values, [1.0, 2.0]);
        assert!(first.data.as_ptr() == at || second.data.as_ptr() == at);
        // Three free versions retired: only one is kept.
        for v in [3.0, 4.0, 5.0] {
            retired.retire(version(v));
        }
        assert!(retired.take_free().is_some());
        assert!(retired.take_free().is_none());
    }

    #[test]
    fn options_no_run_can_use_are_refused_by_name() {
        assert_eq!(TrainOptions::default().check(), Ok(()));
        let bad = |change: fn(&mut TrainOptions)| {
            let mut o = TrainOptions::default();
            change(&mut o);
            o.check().expect_err("refused")
        };
        assert_eq!(bad(|o| o.lr = -1.0), "lr must be a positive number, not -1");
        assert!(bad(|o| o.lr = f32::NAN).starts_with("lr must be a positive number"));
        assert!(bad(|o| o.clip = 0.0).starts_with("clip "));
        assert!(bad(|o| o.loss_scale = 0.0).starts_with("loss_scale "));
        assert!(bad(|o| o.adam.eps = 0.0).starts_with("adam.eps "));
        assert!(bad(|o| o.min_lr = Some(-1e-3)).starts_with("min_lr must be zero or more"));
        assert!(bad(|o| o.adam.weight_decay = -0.1).starts_with("adam.weight_decay "));
        assert!(bad(|o| o.delay_compensation = f32::INFINITY).starts_with("delay_compensation "));
        assert_eq!(
            bad(|o| o.adam.beta2 = 1.0),
            "adam.beta2 must be in [0, 1), not 1"
        );
        assert!(bad(|o| o.adam.beta1 = -0.1).starts_with("adam.beta1 "));
        assert!(bad(|o| o.min_lr = Some(1.0)).starts_with("min_lr (1) must not exceed lr"));
        assert_eq!(bad(|o| o.accum = 0), "accum must be at least 1");
        assert_eq!(bad(|o| o.threads = 0), "threads must be at least 1");
        assert_eq!(
            bad(|o| o.keep_checkpoints = 0),
            "keep_checkpoints must be at least 1"
        );
        assert!(bad(|o| o.eval_windows = 0).starts_with("eval_windows "));
        // Without validation there is nothing to count.
        let quiet = TrainOptions {
            eval_every: 0,
            eval_windows: 0,
            ..TrainOptions::default()
        };
        assert_eq!(quiet.check(), Ok(()));
    }

    #[test]
    fn the_decay_ends_at_a_tenth_of_the_peak_unless_set() {
        let o = TrainOptions {
            lr: 1e-4,
            ..TrainOptions::default()
        };
        assert_eq!(o.min_lr(), 1e-5);
        assert_eq!(o.check(), Ok(()));
        let set = TrainOptions {
            min_lr: Some(0.0),
            ..o
        };
        assert_eq!(set.min_lr(), 0.0);
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
        let options = TrainOptions {
            delay_compensation: 0.6,
            lr: 2.0,
            ..TrainOptions::default()
        };
        // Entry 3: 1 + 0.3·2·(−10)/2 = −2 would flip the sign: clamped to 0.
        (g.data[3], w.data[3], ws.data[3], adam.v.data[3]) = (2.0, 0.0, 10.0, 4.0);
        // Entry 4: 1 + 0.3·2·10/2 = 4 would quadruple it: clamped to double.
        (g.data[4], w.data[4], ws.data[4], adam.v.data[4]) = (2.0, 10.0, 0.0, 4.0);
        // Handed in at twice the size, with the unscale factor that undoes it.
        scale_all(&mut g, 2.0);
        let norm = compensate_delay(&mut g, 0.5, &w, &ws, &adam, &options);
        assert_eq!((g.data[3], g.data[4]), (0.0, 4.0));
        assert!((g.data[0] - 2.2).abs() < 1e-6, "{}", g.data[0]);
        assert!((g.data[1] - 0.4).abs() < 1e-6, "{}", g.data[1]);
        assert_eq!(g.data[2], 0.0);
        // The norm of the result: √(2.2² + 0.4² + 4²).
        let want = (2.2f32 * 2.2 + 0.4 * 0.4 + 16.0).sqrt();
        assert!((norm - want).abs() < 1e-5, "{norm} vs {want}");
    }
}

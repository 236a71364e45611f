//! The training loop: micro-steps with gradient accumulation, loss scaling, clipping, AdamW
//! and the schedule, validation, checkpoints, and the delivery of new weights to the device.

use crate::checkpoint::{
    list_checkpoints, save_rotating, Checkpoint, CheckpointError, CheckpointHeader,
};
use crate::data::split_window;
use crate::delivery::{Delivery, DeliveryStats, Strategy, SwapUnit};
use crate::run::RunSettings;
use crate::tokenizer::TokenizerKind;
use anetrain_device::ane::{ChipRules, Rule, Violation};
use anetrain_device::clock::Clock;
use anetrain_device::host_math::{GemmLibrary, HostMath};
use anetrain_device::{Device, NumericMode};
use anetrain_model::kernels::KernelKind;
use anetrain_model::optim::{
    clip_factor, grad_norm, zero_all, AdamState, AdamW, DelayCompensation, LossScaler, LrSchedule,
};
use anetrain_model::step::{
    forward_loss, micro_step, run_programs, KernelSet, SharedKernel, StepBuffers, StepError,
    StepTiming, WeightSnapshot,
};
use anetrain_model::{ModelConfig, Params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// overcorrects at a higher learning rate. The default of 3 sits in the range of c that
    /// brought double-buffer's validation loss to recompile's on `tiny` (docs/benchmarks.md).
    /// It is not universal: on a toy with steady, noise-free gradients (g² then overstates the
    /// curvature) it made delayed training worse, which is why the correction is clamped and
    /// why 0 turns it off. Only double-buffered steps that ran
    /// behind the master weights are corrected.
    pub delay_compensation: f32,
    /// Weight prediction for double-buffered runs: each background compile bakes in the
    /// weights the master is predicted to reach by the time the set runs (the staleness the
    /// last step ran at, in AdamW updates with the last gradient), not the master weights.
    /// See [`AdamW::predict`].
    pub weight_prediction: bool,
    pub threads: usize,
    /// The library of the host's matrix products (TOML: `"faer"` or `"cblas"`). Like
    /// `threads` it belongs to the machine: a resumed run does not take the checkpoint's.
    #[serde(with = "gemm_name")]
    pub gemm: GemmLibrary,
}

/// [`GemmLibrary`] as its name in TOML and in checkpoints.
mod gemm_name {
    use anetrain_device::host_math::GemmLibrary;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(library: &GemmLibrary, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(library.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GemmLibrary, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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
            gemm: GemmLibrary::best_built(),
        }
    }
}

impl TrainOptions {
    /// The learning rate at the end of the cosine decay: as set, or a tenth of the peak (so
    /// that a run configured with only `lr` decays in proportion).
    pub fn min_lr(&self) -> f32 {
        self.min_lr.unwrap_or(self.lr / 10.0)
    }

    /// How the host runs its matrix products.
    pub fn host_math(&self) -> HostMath {
        HostMath {
            threads: self.threads,
            library: self.gemm,
        }
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
            ("steps", self.steps),
            ("accum", self.accum as u64),
            ("threads", self.threads as u64),
            ("keep_checkpoints", self.keep_checkpoints as u64),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        self.gemm
            .available()
            .map_err(|e| format!("gemm {}: {e}", self.gemm.name()))?;
        if self.eval_every > 0 && self.eval_windows == 0 {
            return Err("eval_windows must be at least 1 when eval_every is set".into());
        }
        // More threads than this only slow a run down, and far more cannot even be spawned.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let most = MAX_THREADS_PER_CORE * cores;
        if self.threads > most {
            return Err(format!(
                "threads {} is more than this machine can use: it has {cores} core(s), so at \
                 most {most}",
                self.threads
            ));
        }
        Ok(())
    }
}

/// Threads per core beyond which `threads` is refused.
pub const MAX_THREADS_PER_CORE: usize = 8;

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
    /// The device's chip refuses a kernel of the run, or a limit of the run: nothing was
    /// compiled.
    #[error(
        "`{model}` with --weights {strategy} cannot run on this device: {}",
        describe_refusals(.refusals)
    )]
    ChipRefuses {
        model: String,
        strategy: &'static str,
        refusals: Vec<Violation>,
    },
    /// The gradient of `step` was not finite at the smallest loss scale: the weights or the
    /// learning rate are out of range. Nothing was written for that step.
    #[error(
        "training diverged at step {step}: its gradient is not finite{}",
        last_checkpoint.as_ref().map_or(String::new(), |p| format!(
            "; the last checkpoint, {}, holds the weights before it",
            p.display()
        ))
    )]
    Diverged {
        step: u64,
        last_checkpoint: Option<PathBuf>,
    },
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
    /// The update whose failed eval last restarted the process: failing again there stops
    /// the run.
    pub eval_failure_restart: Option<u64>,
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
    /// Of the swaps, those of a group of layers, and the layers per group (a double buffer
    /// that swaps groups because two whole sets do not fit the chip or the budget).
    pub group_swaps: u64,
    pub layers_per_group: Option<usize>,
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
    /// A group of layers was swapped in (a double buffer that swaps groups): before update
    /// `step`, those layers run on weights version `version`.
    GroupSwap {
        step: u64,
        layers: std::ops::Range<usize>,
        version: u64,
    },
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
                tokenizer_config: None,
                base_model: None,
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
    /// The tokenizer's `tokenizer_config.json` as JSON text, if it has one.
    pub tokenizer_config: Option<String>,
    /// Kept in every checkpoint's header as `base_model`.
    pub base_model: Option<crate::checkpoint::BaseModelFiles>,
    /// Kept in every checkpoint's header as `run` (see [`CheckpointHeader::run`]).
    pub run: RunSettings,
}

/// How new weights reach the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliverySettings {
    pub strategy: Strategy,
    /// Updates the device weights may lag the master weights (double buffer).
    pub max_staleness: u64,
    /// Consecutive failed background compiles before the run stops with an error.
    pub max_failures: u32,
}

impl DeliverySettings {
    /// `strategy` with a staleness bound of 1 and three failures allowed in a row.
    pub fn new(strategy: Strategy) -> DeliverySettings {
        DeliverySettings {
            strategy,
            max_staleness: 1,
            max_failures: 3,
        }
    }
}

/// What a run trains on besides its options and state: the device, the clock it is timed
/// on, how weights reach the device, and where it stops.
pub struct TrainSetup<'a> {
    pub device: &'a dyn Device,
    pub clock: &'a dyn Clock,
    pub delivery: DeliverySettings,
    /// On a virtual clock, whether host work (which really runs) also spends virtual time:
    /// on for honest simulated reports; off where a virtual timeline must be exact.
    pub simulate_host_time: bool,
    /// Stop (with a checkpoint) once this many updates are done, though the schedule is
    /// longer; `--resume` continues it.
    pub stop_after: Option<u64>,
    /// Set by the caller once it cannot keep the run's records (its metrics log on a full
    /// disk): the run stops after the update it is in, with a checkpoint.
    pub halt: Option<&'a AtomicBool>,
}

/// How a call to [`train`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrainOutcome {
    /// The schedule, or `stop_after`, is done.
    Finished,
    /// The run was checkpointed after `step` and goes on in a new process (`--resume
    /// checkpoint`), for `reason`.
    Restart {
        step: u64,
        checkpoint: PathBuf,
        reason: RestartReason,
    },
    /// The caller raised [`TrainSetup::halt`]: the run stopped after update `step`, with a
    /// checkpoint when it has a folder (`--resume` continues it).
    Halted {
        step: u64,
        checkpoint: Option<PathBuf>,
    },
}

/// Why a run goes on in a new process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// The device's compile budget cannot pay for the next compile.
    CompileBudget,
    /// An eval failed: on the ANE a failed request can latch, failing every later one until
    /// the process exits. The update it was part of runs again in the new process; a second
    /// failure there stops the run.
    EvalFailed(String),
}

impl std::fmt::Display for RestartReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartReason::CompileBudget => f.write_str("compile budget spent"),
            RestartReason::EvalFailed(why) => write!(f, "an eval failed ({why})"),
        }
    }
}

/// Runs the loop from `state.step` to `options.steps` (or `setup.stop_after`).
pub fn train(
    setup: &TrainSetup<'_>,
    options: &TrainOptions,
    state: &mut TrainState,
    data: &mut dyn WindowSource,
    checkpoints: Option<&CheckpointFolder>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainOutcome, TrainError> {
    options.check().map_err(TrainError::Options)?;
    let (device, clock) = (setup.device, setup.clock);
    let strategy = setup.delivery.strategy;
    let config = state.config.clone();
    let started = clock.now();
    let wall_before = state.counters.wall;
    check_budget(device, &config, strategy)?;
    check_chip_rules(device, &config, strategy)?;
    let t = clock.now();
    let shared = SharedKernel::compile(device, &state.params)?;
    // A double-buffered run resumed from a checkpoint starts its device on the version the
    // checkpointed run was running, and compiles the master weights in the background below.
    let resumed_behind = match strategy {
        Strategy::DoubleBuffer | Strategy::Frozen => state.device_weights.take(),
        Strategy::Recompile | Strategy::Dynamic => None,
    }
    .filter(|w| w.version < state.step);
    let initial = strategy.compile_initial(
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

    let layout = state.params.layout.clone();
    let outcome = std::thread::scope(|scope| -> Result<TrainOutcome, TrainError> {
        let settings = setup.delivery;
        let mut delivery = Delivery::new(
            strategy,
            scope,
            device,
            clock,
            initial,
            settings.max_staleness,
            settings.max_failures,
        )
        .counting_host_time(setup.simulate_host_time);
        if resumed_behind.is_some() && strategy == Strategy::DoubleBuffer {
            // What the checkpointed run was compiling when it stopped: the master weights.
            // (With weight prediction it was compiling a prediction, which the checkpoint
            // does not keep: that run resumes close to, not exactly like, the original.)
            delivery.publish(snapshot(state))?;
        }
        let mut run = Run {
            setup,
            options,
            state,
            data,
            checkpoints,
            on_event,
            schedule: LrSchedule {
                max_lr: options.lr,
                min_lr: options.min_lr(),
                warmup: options.warmup,
                total: options.steps,
            },
            delivery,
            shared,
            buf: StepBuffers::new(&config),
            grads: Params::zeros(layout),
            window: vec![0u32; config.seq_len + 1],
            inputs: Vec::with_capacity(config.seq_len),
            targets: Vec::with_capacity(config.seq_len),
            retired: RetiredVersions::default(),
            started,
            wall_before,
        };
        let outcome = run.run();
        run.delivery.drain();
        run.state.counters = with_delivery(&run.state.counters, &run.delivery.stats);
        outcome
    })?;
    state.counters.wall = wall_before + clock.now().saturating_sub(started);
    Ok(outcome)
}

fn describe_refusals(refusals: &[Violation]) -> String {
    let lines: Vec<String> = refusals.iter().map(Violation::to_string).collect();
    lines.join("\n  ")
}

/// Refuses, before anything compiles, a run whose kernels or whose loaded-kernel count the
/// device's chip would refuse (the chip's rules: `ane-constraints.md`). Every kernel's
/// refusals are listed, each naming the kernel.
pub fn check_chip_rules(
    device: &dyn Device,
    config: &ModelConfig,
    strategy: Strategy,
) -> Result<(), TrainError> {
    let Some(rules) = device.chip_rules() else {
        return Ok(());
    };
    let mut refusals = Vec::new();
    for kernel in run_programs(device, config, strategy.weights_as_inputs())? {
        let found = rules
            .refusals(&kernel.program)
            .map_err(|source| StepError::Generate {
                kernel: kernel.name.clone(),
                source,
            })?;
        refusals.extend(found.into_iter().map(|mut v| {
            v.at = format!("kernel {}: {}", kernel.name, v.at);
            v
        }));
    }
    refusals.extend(loaded_kernels_refusal(&rules, config, strategy));
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(TrainError::ChipRefuses {
            model: config.name.clone(),
            strategy: strategy.name(),
            refusals,
        })
    }
}

/// The `loaded-kernels` rule's refusal of a run of `strategy`, if the chip cannot hold the
/// kernels it needs loaded at once: one set and the shared kernel, and for a double buffer one
/// layer's group beside them at least (it swaps groups of layers when two whole sets do not
/// fit).
pub fn loaded_kernels_refusal(
    rules: &ChipRules,
    config: &ModelConfig,
    strategy: Strategy,
) -> Option<Violation> {
    let (limit, _) = rules.max_loaded_kernels()?;
    let limit = limit as u64;
    let one_set = strategy.kernels_loaded_at_once(config, SwapUnit::WholeSet)
        - match strategy {
            Strategy::DoubleBuffer => strategy.kernels_per_set(config),
            _ => 0,
        };
    let value = if one_set > limit {
        format!(
            "{one_set} kernels loaded at once for one set of {} and the shared kernel",
            strategy.kernels_per_set(config)
        )
    } else {
        let unit = match strategy {
            Strategy::DoubleBuffer => {
                SwapUnit::largest(config, Some(limit), None).unwrap_or(SwapUnit::Layers(1))
            }
            _ => SwapUnit::WholeSet,
        };
        let loaded = strategy.kernels_loaded_at_once(config, unit);
        if loaded <= limit {
            return None;
        }
        format!("{loaded} kernels loaded at once, beside one set a group of one layer")
    };
    Some(rules.violation(
        |r| matches!(r, Rule::MaxLoadedKernels(_)),
        format!("a run of --weights {}", strategy.name()),
        value,
    ))
}

/// A process must at least afford the kernels it starts on (the shared kernel and one set)
/// and, double-buffered, the compile of one layer group beside them, which a run resumed on
/// older weights needs before its next update; otherwise every restart would fail the same
/// way.
fn check_budget(
    device: &dyn Device,
    config: &ModelConfig,
    strategy: Strategy,
) -> Result<(), TrainError> {
    let needed = strategy.kernels_loaded_at_once(config, SwapUnit::Layers(1));
    let what = match strategy {
        Strategy::DoubleBuffer => "starts on and one layer's background compile",
        _ => "starts on",
    };
    match device.compile_budget() {
        Some(budget) if budget.remaining() < needed => Err(TrainError::Other(format!(
            "the compile budget ({} of {} compiles left in this process) cannot pay for the \
             kernels a run of `{}` {what} ({needed} with --weights {}): raise \
             --compile-budget",
            budget.remaining(),
            budget.budget,
            config.name,
            strategy.name()
        ))),
        _ => Ok(()),
    }
}

/// A run in progress: what the loop holds from step to step.
struct Run<'r, 'scope, 'env> {
    setup: &'r TrainSetup<'r>,
    options: &'r TrainOptions,
    state: &'r mut TrainState,
    data: &'r mut dyn WindowSource,
    checkpoints: Option<&'r CheckpointFolder>,
    on_event: &'r mut dyn FnMut(&Event),
    schedule: LrSchedule,
    delivery: Delivery<'scope, 'env>,
    shared: SharedKernel,
    buf: StepBuffers,
    /// The gradient of the current update, accumulated over its windows.
    grads: Params,
    window: Vec<u32>,
    /// The window's inputs and targets (see [`split_window`]).
    inputs: Vec<u32>,
    targets: Vec<u32>,
    retired: RetiredVersions,
    /// When this process started training, and the run's wall time before it.
    started: Duration,
    wall_before: Duration,
}

/// What one update's windows computed, before the optimizer applies it.
struct Gradients<'c> {
    loss_sum: f64,
    timing: StepTiming<'c>,
    /// The weights version the device computed them at.
    ran_on: u64,
    train_time: Duration,
}

/// What the optimizer did with an update's gradient.
struct Update {
    lr: f32,
    /// The gradient's norm after unscaling (and compensation); NaN when skipped.
    norm: f32,
    applied: bool,
    optimizer_time: Duration,
}

impl<'r> Run<'r, '_, '_> {
    /// Steps until the schedule (or `stop_after`) is done, or the budget asks for a restart.
    fn run(&mut self) -> Result<TrainOutcome, TrainError> {
        let options = self.options;
        let end = self
            .setup
            .stop_after
            .map_or(options.steps, |s| s.min(options.steps));
        while self.state.step < end {
            let clock = self.setup.clock;
            let step_start = clock.now();
            let stall_before = self.delivery.stats.stall;
            if let Some(restart) = self.acquire()? {
                return Ok(restart);
            }
            let sampler = self.data.state();
            let gradients = match self.compute_gradients() {
                Ok(gradients) => gradients,
                Err(TrainError::Step(e @ StepError::Eval { .. })) => {
                    return self.restart_after_failed_eval(e, sampler);
                }
                Err(e) => return Err(e),
            };
            let update = self.update(gradients.ran_on)?;
            self.record(&gradients, &update, step_start, stall_before);
            let last = self.state.step == end;
            if options.eval_every > 0 && (self.state.step % options.eval_every == 0 || last) {
                self.validate()?;
            }
            self.state.counters.wall = self.wall_before + clock.now().saturating_sub(self.started);
            let due =
                options.checkpoint_every > 0 && self.state.step % options.checkpoint_every == 0;
            let mut saved = None;
            if self.checkpoints.is_some() && (due || last) {
                saved = Some(self.checkpoint()?);
            }
            if !last && self.setup.halt.is_some_and(|h| h.load(Ordering::SeqCst)) {
                // On a full disk the checkpoint may fail too; the caller names the newest one
                // that was written.
                let checkpoint = match saved {
                    Some(path) => Some(path),
                    None if self.checkpoints.is_some() => self.checkpoint().ok(),
                    None => None,
                };
                return Ok(TrainOutcome::Halted {
                    step: self.state.step,
                    checkpoint,
                });
            }
        }
        Ok(TrainOutcome::Finished)
    }

    /// Makes the kernels of the weights this step runs on active, waiting as the staleness
    /// bound asks. Returns the restart the compile budget asks for instead, if it does.
    fn acquire(&mut self) -> Result<Option<TrainOutcome>, TrainError> {
        let acquired = self.delivery.acquire(self.state.step).map(|_| ());
        self.report_delivery();
        if let Err(source) = acquired {
            // Compiles failed too often in a row: keep what was trained before stopping.
            let checkpoint = match self.checkpoints {
                Some(_) => Some(self.checkpoint()?),
                None => None,
            };
            return Err(TrainError::CompileFailures {
                step: self.state.step,
                source: Box::new(source),
                checkpoint,
            });
        }
        if !self.delivery.restart_needed() {
            return Ok(None);
        }
        // The budget cannot pay for the compile of the master weights (the kernel set a
        // recompile needs, or the one a double buffer would overlap with this step). The one
        // place a run restarts is here, before the step: the device's version and the
        // master's are then all a new process needs to run it exactly as this one would have
        // (its first compile is that same one). One step later, the master would have moved
        // on and the blocked version would be lost. (Once the schedule or `stop_after` is
        // done the loop does not come back here: nothing to restart.)
        if self.checkpoints.is_none() {
            return Err(TrainError::Other(format!(
                "the compile budget is spent after step {} and there is no run folder to \
                 checkpoint to",
                self.state.step
            )));
        }
        let checkpoint = self.checkpoint()?;
        Ok(Some(TrainOutcome::Restart {
            step: self.state.step,
            checkpoint,
            reason: RestartReason::CompileBudget,
        }))
    }

    /// Reports what delivery did since the last look: failed compiles, and layer groups
    /// swapped in before the next update.
    fn report_delivery(&mut self) {
        for failure in std::mem::take(&mut self.delivery.failures) {
            (self.on_event)(&Event::CompileFailed(failure));
        }
        for swap in std::mem::take(&mut self.delivery.group_swaps) {
            (self.on_event)(&Event::GroupSwap {
                step: self.state.step + 1,
                layers: swap.layers,
                version: swap.version,
            });
        }
    }

    /// The update's gradient: one micro-step per window on the active kernels, summed in
    /// `grads` at the loss scale.
    fn compute_gradients(&mut self) -> Result<Gradients<'r>, TrainError> {
        let (device, clock) = (self.setup.device, self.setup.clock);
        let accum = self.options.accum.max(1);
        let set = self.delivery.active();
        let ran_on = set.version();
        let train_start = clock.now();
        zero_all(&mut self.grads);
        let mut loss_sum = 0.0f64;
        let mut timing = StepTiming::new(clock);
        for _ in 0..accum {
            self.data.next_train_window(&mut self.window);
            split_window(&self.window, &mut self.inputs, &mut self.targets);
            let (loss, t) = micro_step(
                device,
                clock,
                set,
                &mut self.shared,
                &mut self.buf,
                &self.inputs,
                &self.targets,
                self.state.scaler.scale,
                &mut self.grads,
                self.options.host_math(),
            )?;
            loss_sum += loss as f64;
            timing.add(&t);
        }
        // On a virtual clock host work has no length where it ran (it is added below).
        for span in timing.host_spans.iter().filter(|s| s.end > s.start) {
            (self.on_event)(&Event::HostWork {
                name: span.name,
                start: span.start,
                end: span.end,
            });
        }
        // Host work really ran; on a virtual clock it still takes its time (the weight
        // gradients only as far as the evals did not hide them).
        if clock.is_simulated() && self.setup.simulate_host_time {
            clock.sleep(timing.host_math + timing.weight_grad_wait);
        }
        Ok(Gradients {
            loss_sum,
            timing,
            ran_on,
            train_time: clock.now().saturating_sub(train_start),
        })
    }

    /// Applies the update's gradient to the master weights (unless fp16 overflowed it) and
    /// hands the new version to delivery.
    fn update(&mut self, ran_on: u64) -> Result<Update, TrainError> {
        let clock = self.setup.clock;
        let options = self.options;
        let state = &mut *self.state;
        let opt_start = Instant::now();
        let opt_span_start = clock.now();
        // The gradients carry the scale they were computed at, whatever the scaler does next.
        let scale = state.scaler.scale;
        let unscale = 1.0 / (options.accum.max(1) as f32 * scale);
        let lr = self.schedule.at(state.step);
        let mut norm = f32::NAN;
        // What the update multiplied the gradient by (unscaling and clipping).
        let mut applied_scale = 1.0;
        // Only delayed updates are corrected (frozen kernels are a baseline, not a run).
        let double_buffered = self.setup.delivery.strategy == Strategy::DoubleBuffer;
        let predict = options.weight_prediction && double_buffered;
        let compensate = options.delay_compensation > 0.0 && double_buffered && ran_on < state.step;
        // One pass over the gradient measures its norm, which is finite exactly when every
        // gradient is (squares of f32 summed in f64 cannot overflow): the fp16 overflow check.
        // Delay compensation rewrites the gradient in that same pass, unscaled and corrected
        // (a non-finite gradient stays non-finite through it), and measures the corrected
        // norm. Otherwise unscaling and clipping ride into the update (and the prediction),
        // which saves two passes over every gradient.
        let (finite, measured_norm, mut grad_scale) = if compensate {
            let stale = self.delivery.active().snapshot().params.clone();
            let compensation =
                DelayCompensation::new(options.delay_compensation, options.lr, &options.adam);
            let corrected =
                compensation.correct(&mut self.grads, unscale, &state.params, &stale, &state.adam);
            (corrected.is_finite(), corrected, 1.0)
        } else {
            let raw = grad_norm(&self.grads);
            (raw.is_finite(), raw * unscale, unscale)
        };
        // A gradient that overflows at the smallest loss scale cannot be saved by scaling
        // (in fp32 there is no scaling at all): the run has diverged. It stops here, before
        // the update, so the checkpoints on disk keep the last good weights.
        if !finite && state.scaler.scale <= state.scaler.min_scale {
            let last_checkpoint = self
                .checkpoints
                .and_then(|folder| list_checkpoints(&folder.dir).pop())
                .map(|(_, path)| path);
            return Err(TrainError::Diverged {
                step: state.step + 1,
                last_checkpoint,
            });
        }
        let apply = state.scaler.observe(finite);
        if apply {
            norm = measured_norm;
            grad_scale *= clip_factor(norm, options.clip);
            applied_scale = grad_scale;
            self.delivery.release_before_update();
            let adam = &options.adam;
            match Arc::get_mut(&mut state.params) {
                Some(params) => {
                    adam.update_scaled(params, &self.grads, grad_scale, &mut state.adam, lr)
                }
                None => {
                    // A kernel set (or its compile) still holds these weights: the new version
                    // goes into the buffer of one no set holds any more, in the pass that
                    // computes it, instead of into a copy made first.
                    let mut next = self
                        .retired
                        .take_free()
                        .unwrap_or_else(|| Params::zeros(state.params.layout.clone()));
                    adam.update_scaled_from(
                        &state.params,
                        &mut next,
                        &self.grads,
                        grad_scale,
                        &mut state.adam,
                        lr,
                    );
                    self.retired
                        .retire(std::mem::replace(&mut state.params, Arc::new(next)));
                }
            }
        } else {
            state.counters.skipped_updates += 1;
        }
        state.step += 1;
        let optimizer_time = opt_start.elapsed();
        if clock.is_simulated() && self.setup.simulate_host_time {
            clock.sleep(optimizer_time);
        }
        (self.on_event)(&Event::HostWork {
            name: "optimizer",
            start: opt_span_start,
            end: clock.now(),
        });
        if apply {
            let next = if predict {
                let horizon = (state.step - 1).saturating_sub(ran_on).max(1);
                let lr = self.schedule.at(state.step);
                predicted_snapshot(state, &self.grads, applied_scale, options, lr, horizon)
            } else {
                snapshot(state)
            };
            self.delivery.publish(next)?;
        }
        Ok(Update {
            lr,
            norm,
            applied: apply,
            optimizer_time,
        })
    }

    /// Adds the update to the run's counters and reports its row.
    fn record(
        &mut self,
        g: &Gradients<'_>,
        u: &Update,
        step_start: Duration,
        stall_before: Duration,
    ) {
        let clock = self.setup.clock;
        let state = &mut *self.state;
        let accum = self.options.accum.max(1);
        let timing = &g.timing;
        let c = &mut state.counters;
        c.train += g.train_time;
        c.device_eval += timing.device_eval;
        c.host_math += timing.host_math;
        c.weight_grads += timing.weight_grads;
        c.weight_grad_wait += timing.weight_grad_wait;
        c.optimizer += u.optimizer_time;
        let tokens = (state.config.seq_len * accum as usize) as u64;
        c.tokens += tokens;
        let step_time = clock.now().saturating_sub(step_start);
        let master_before = state.step - 1;
        (self.on_event)(&Event::Step(StepRecord {
            step: state.step,
            loss: (g.loss_sum / accum as f64) as f32,
            lr: u.lr,
            grad_norm: u.norm,
            loss_scale: state.scaler.scale,
            skipped: !u.applied,
            tokens_per_s: tokens as f64 / step_time.as_secs_f64().max(1e-12),
            ms: step_time.as_secs_f64() * 1e3,
            start_s: step_start.as_secs_f64(),
            weights_version: g.ran_on,
            staleness: master_before.saturating_sub(g.ran_on),
            eval_ms: ms(timing.device_eval),
            host_ms: ms(timing.host_math + timing.weight_grad_wait),
            optimizer_ms: ms(u.optimizer_time),
            stall_ms: ms(self.delivery.stats.stall.saturating_sub(stall_before)),
            eval_ms_by_kernel: KernelKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), ms(timing.eval_by_kernel[k.index()])))
                .collect(),
        }));
    }

    /// The validation loss, and its report. The schedule's last validation is of the weights
    /// the run ends with. Earlier ones evaluate the set the device runs (a double buffer's
    /// lags the master), and say which version that is: waiting for the master's compile
    /// mid-run would change the delivery timeline the run is measured on.
    fn validate(&mut self) -> Result<(), TrainError> {
        let (device, clock) = (self.setup.device, self.setup.clock);
        let step = self.state.step;
        if step == self.options.steps {
            self.delivery.catch_up(step)?;
            self.report_delivery();
        }
        let set = self.delivery.active();
        let weights_version = set.version();
        let start = clock.now();
        let s = self.state.config.seq_len;
        let loss = validation_loss(
            device,
            clock,
            set,
            &mut self.buf,
            self.data,
            self.options,
            s,
        )?;
        (self.on_event)(&Event::HostWork {
            name: "validation",
            start,
            end: clock.now(),
        });
        (self.on_event)(&Event::Validation {
            step,
            loss,
            weights_version,
        });
        Ok(())
    }

    /// Writes a checkpoint of the run as it stands, with the weights the device runs the next
    /// step on when they lag the master's, and reports it. Only called with a run folder.
    /// A failed eval ends the process: the update it was part of is checkpointed undone (the
    /// data source as it was before the update's windows) and runs again in a new process,
    /// unless it already failed in the last one, or there is no run folder.
    fn restart_after_failed_eval(
        &mut self,
        failure: StepError,
        sampler_before: serde_json::Value,
    ) -> Result<TrainOutcome, TrainError> {
        let step = self.state.step;
        if self.checkpoints.is_none() || self.state.counters.eval_failure_restart == Some(step) {
            return Err(TrainError::Step(failure));
        }
        self.state.counters.eval_failure_restart = Some(step);
        let checkpoint = self.checkpoint_with(sampler_before)?;
        Ok(TrainOutcome::Restart {
            step,
            checkpoint,
            reason: RestartReason::EvalFailed(failure.to_string()),
        })
    }

    fn checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let sampler = self.data.state();
        self.checkpoint_with(sampler)
    }

    /// Writes a checkpoint with the data source in state `sampler`.
    fn checkpoint_with(&mut self, sampler: serde_json::Value) -> Result<PathBuf, TrainError> {
        let Some(folder) = self.checkpoints else {
            return Err(TrainError::Other("no run folder to checkpoint to".into()));
        };
        let state = &mut *self.state;
        let next = self.delivery.next_weights(state.step);
        state.device_weights = (next.version < state.step).then(|| next.clone());
        let mut ckpt = state.checkpoint(
            self.options,
            sampler,
            folder.tokenizer_kind,
            folder.tokenizer.clone(),
        );
        ckpt.header.counters = with_delivery(&state.counters, &self.delivery.stats);
        ckpt.header.run = Some(folder.run.clone());
        ckpt.header.tokenizer_config = folder.tokenizer_config.clone();
        ckpt.header.base_model = folder.base_model.clone();
        let path = save_rotating(&ckpt, &folder.dir, self.options.keep_checkpoints)?;
        (self.on_event)(&Event::Checkpoint {
            step: state.step,
            path: path.clone(),
        });
        Ok(path)
    }
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
    c.group_swaps += stats.group_swaps;
    c.layers_per_group = stats.layers_per_group.or(c.layers_per_group);
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
/// newest one waiting); a fresh buffer each time instead has to be faulted in, which made a
/// simulated Stories110M run's updates several times slower (docs/benchmarks.md).
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
    let (mut inputs, mut targets) = (Vec::with_capacity(s), Vec::with_capacity(s));
    let mut sum = 0.0f64;
    for i in 0..n {
        data.validation_window(i, &mut window);
        split_window(&window, &mut inputs, &mut targets);
        sum += forward_loss(
            device,
            clock,
            set,
            buf,
            &inputs,
            &targets,
            options.host_math(),
        )? as f64;
    }
    Ok((sum / n as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(bad(|o| o.steps = 0), "steps must be at least 1");
        assert_eq!(bad(|o| o.threads = 0), "threads must be at least 1");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let too_many = bad(|o| o.threads = 100_000);
        assert!(
            too_many.starts_with("threads 100000 is more than this machine can use")
                && too_many.contains(&format!("it has {cores} core(s)")),
            "{too_many}"
        );
        assert!(
            TrainOptions {
                threads: MAX_THREADS_PER_CORE * cores,
                ..TrainOptions::default()
            }
            .check()
            .is_ok(),
            "the cap itself is allowed"
        );
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
}

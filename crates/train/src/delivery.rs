//! How new weights reach the device.
//!
//! - [`Strategy::Recompile`]: after each update, compile the whole kernel set, then go on.
//! - [`Strategy::DoubleBuffer`]: after each update, freeze the weights into an immutable,
//!   versioned snapshot and compile it on a background thread while the active set keeps
//!   evaluating; at a step boundary, swap to the new set once every kernel of it compiled. The
//!   device's weights lag the master weights by at most `max_staleness` updates: at a boundary
//!   where the lag would be larger, the trainer waits for the compile and counts the wait as
//!   stall. A failed compile keeps the active set, is reported and retried; too many failures
//!   in a row end the run with an error.
//! - [`Strategy::Dynamic`]: kernels that take their weights as inputs are compiled once; after
//!   each update the new snapshot is staged into every layer's persistent inputs, so every step
//!   runs on the newest weights with no compile at all. Staging is host work, counted apart.

use crate::priority::{thread_cpu_time, BackgroundThread};
use anetrain_device::clock::Clock;
use anetrain_device::decorate::Decorator;
use anetrain_device::{Device, DeviceError, Kernel};
use anetrain_mil::Program;
use anetrain_model::config::ModelConfig;
use anetrain_model::kernels::KernelKind;
use anetrain_model::step::{
    compile_dynamic_kernel_set, compile_kernel_set, BakedPrograms, KernelSet, LayerGroup,
    SharedKernel, StepError, WeightSnapshot,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Recompile,
    DoubleBuffer,
    Dynamic,
    /// A measurement baseline, not a way to train: the device keeps the initial weights and
    /// nothing is ever recompiled, which bounds the throughput any strategy can reach.
    Frozen,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "recompile" => Ok(Strategy::Recompile),
            "double-buffer" => Ok(Strategy::DoubleBuffer),
            "dynamic" => Ok(Strategy::Dynamic),
            "frozen" => Ok(Strategy::Frozen),
            other => Err(format!(
                "unknown weight delivery `{other}` (expected recompile, double-buffer or dynamic)"
            )),
        }
    }
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Recompile => "recompile",
            Strategy::DoubleBuffer => "double-buffer",
            Strategy::Dynamic => "dynamic",
            Strategy::Frozen => "frozen",
        }
    }

    /// Kernels one set of this strategy compiles for `config`: every layer's weight-bearing
    /// kernels with their weights baked in, or (dynamic) each of them once.
    pub fn kernels_per_set(self, config: &ModelConfig) -> u64 {
        match self {
            Strategy::Recompile | Strategy::DoubleBuffer | Strategy::Frozen => {
                KernelSet::kernel_count(config) as u64
            }
            Strategy::Dynamic => KernelKind::WEIGHTED.len() as u64,
        }
    }

    /// Kernels a run of this strategy holds loaded at once, the shared kernel included, when
    /// a double buffer swaps in `unit`s: it holds a whole set beside the next unit compiling;
    /// a recompile frees its set first.
    pub fn kernels_loaded_at_once(self, config: &ModelConfig, unit: SwapUnit) -> u64 {
        let next = match self {
            Strategy::DoubleBuffer => unit.kernels(config),
            Strategy::Recompile | Strategy::Dynamic | Strategy::Frozen => 0,
        };
        SharedKernel::COMPILES as u64 + self.kernels_per_set(config) + next
    }

    /// Whether its kernels take the weights as inputs.
    pub fn weights_as_inputs(self) -> bool {
        self == Strategy::Dynamic
    }

    /// Compiles the kernel set a run starts on: the snapshot's weights baked in, or (dynamic)
    /// kernels that take weights as inputs, with the snapshot staged.
    pub fn compile_initial(
        self,
        device: &dyn Device,
        snapshot: WeightSnapshot,
    ) -> Result<KernelSet, StepError> {
        match self {
            Strategy::Recompile | Strategy::DoubleBuffer | Strategy::Frozen => {
                compile_kernel_set(device, snapshot)
            }
            Strategy::Dynamic => compile_dynamic_kernel_set(device, snapshot),
        }
    }
}

/// What a double buffer compiles in the background and swaps in at once: a whole kernel set,
/// or the kernels of a group of consecutive layers when two whole sets pass the chip's
/// loaded-kernel limit or the process's compile budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapUnit {
    WholeSet,
    /// Groups of this many layers (the last may hold fewer).
    Layers(usize),
}

impl SwapUnit {
    /// The largest unit a run of `config` can swap with at most `loaded_limit` kernels loaded
    /// and `budget` compiles per process (`None`: no limit), beside its shared kernel and a
    /// whole set: `None` when not even one layer fits.
    pub fn largest(
        config: &ModelConfig,
        loaded_limit: Option<u64>,
        budget: Option<u64>,
    ) -> Option<SwapUnit> {
        let per_layer = KernelKind::WEIGHTED.len() as u64;
        let set = config.n_layers as u64 * per_layer;
        let fixed = SharedKernel::COMPILES as u64 + set;
        let room = [loaded_limit, budget]
            .into_iter()
            .flatten()
            .map(|limit| limit.saturating_sub(fixed))
            .min();
        match room {
            None => Some(SwapUnit::WholeSet),
            Some(room) if room >= set => Some(SwapUnit::WholeSet),
            Some(room) if room >= per_layer => Some(SwapUnit::Layers((room / per_layer) as usize)),
            Some(_) => None,
        }
    }

    /// Kernels one unit compiles.
    pub fn kernels(self, config: &ModelConfig) -> u64 {
        let layers = match self {
            SwapUnit::WholeSet => config.n_layers,
            SwapUnit::Layers(g) => g.min(config.n_layers),
        };
        (layers * KernelKind::WEIGHTED.len()) as u64
    }

    /// Units that make up a whole set.
    pub fn per_set(self, config: &ModelConfig) -> u64 {
        match self {
            SwapUnit::WholeSet => 1,
            SwapUnit::Layers(g) => config.n_layers.div_ceil(g.max(1)) as u64,
        }
    }
}

/// A group of layers swapped in: which, the weights version it was compiled from, and the
/// master version when it went in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSwap {
    pub layers: std::ops::Range<usize>,
    pub version: u64,
}

/// What delivery cost and did, for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryStats {
    /// Time the training thread waited for compiles.
    pub stall: Duration,
    /// Time spent compiling on the background thread (double-buffer), start to end.
    pub background_compile: Duration,
    /// CPU time the background compiles used (Linux; zero where it cannot be measured): on a
    /// CPU device what they took from the cores, as opposed to how long they took at idle
    /// priority.
    pub background_compile_cpu: Duration,
    /// Host time spent staging new weights into the kernels' inputs (dynamic).
    pub staging: Duration,
    /// Compiles used, a failed set's up to the kernel that failed.
    pub kernels_compiled: u64,
    /// Swaps of the active kernels, whole sets and layer groups alike.
    pub swaps: u64,
    /// Of those, swaps of a group of layers, and the layers per group.
    pub group_swaps: u64,
    pub layers_per_group: Option<usize>,
    pub failed_compiles: u64,
    /// Steps by how many updates the device weights lagged the master weights.
    pub staleness: BTreeMap<u64, u64>,
}

/// What a background compile made: a whole set, or a group of layers to swap into the active
/// set.
enum Compiled {
    Set(KernelSet),
    Group(LayerGroup),
}

/// A finished compile: the set (or why there is none), how long it took and when it ended on
/// the clock, and the CPU time its thread used where that can be measured.
struct CompileResult {
    set: Result<Compiled, StepError>,
    /// Compiles it used (a failed set's up to the kernel that failed).
    kernels: u64,
    took: Duration,
    ended: Duration,
    cpu: Option<Duration>,
}

impl CompileResult {
    /// A compile that produced no set, at `ended` on the clock.
    fn failed(error: StepError, ended: Duration) -> CompileResult {
        CompileResult {
            set: Err(error),
            kernels: 0,
            took: Duration::ZERO,
            ended,
            cpu: None,
        }
    }
}

/// A compile on the background thread: running, or finished with its result and the time it
/// ended on the clock (under a latency model that end may still lie in the trainer's future).
enum JobState<'scope> {
    Running(ScopedJoinHandle<'scope, CompileResult>),
    Finished(CompileResult),
}

struct Job<'scope> {
    snapshot: WeightSnapshot,
    /// The layers it compiles (all, for a whole set).
    layers: std::ops::Range<usize>,
    state: JobState<'scope>,
    /// The compile runs at idle priority until the trainer waits for it.
    priority: BackgroundThread,
}

/// Delivers weights to the device with one of the strategies.
pub struct Delivery<'scope, 'env> {
    strategy: Strategy,
    scope: &'scope Scope<'scope, 'env>,
    device: &'env dyn Device,
    clock: &'env dyn Clock,
    active: KernelSet,
    /// What a baked set's successors are compiled from (generated once per run).
    programs: Option<Arc<BakedPrograms>>,
    job: Option<Job<'scope>>,
    /// The newest snapshot not yet handed to a compile.
    latest: Option<WeightSnapshot>,
    max_staleness: u64,
    max_failures: u32,
    consecutive_failures: u32,
    /// What the background compiles and swaps in at once.
    unit: SwapUnit,
    /// Kernels in one unit: what one more compile of the weights costs of the budget.
    set_size: u64,
    /// The newest weights published (swapping in groups, the groups still older than them
    /// are compiled from them in turn).
    newest: Option<WeightSnapshot>,
    /// Groups swapped in since the caller last looked (for the record).
    pub group_swaps: Vec<GroupSwap>,
    /// The device's compile budget cannot pay for the next set or group.
    budget_blocked: bool,
    /// Swapping groups, the last step acquired found the oldest layer past the staleness
    /// bound: it can only go on once a group compiles.
    past_bound: bool,
    /// On a virtual clock, whether host work (staging) also spends virtual time.
    count_host_time: bool,
    pub stats: DeliveryStats,
    /// Failures seen since the caller last looked (for reporting).
    pub failures: Vec<String>,
}

impl<'scope, 'env> Delivery<'scope, 'env> {
    pub fn new(
        strategy: Strategy,
        scope: &'scope Scope<'scope, 'env>,
        device: &'env dyn Device,
        clock: &'env dyn Clock,
        initial: KernelSet,
        max_staleness: u64,
        max_failures: u32,
    ) -> Self {
        let config = initial.snapshot().params.layout.config.clone();
        // Sized by what this process has left: the initial set and the shared kernel are
        // compiled already, and are what `SwapUnit::largest` sets aside.
        let started = SharedKernel::COMPILES as u64 + initial.compiled_kernels() as u64;
        let unit = match strategy {
            Strategy::DoubleBuffer => swap_unit(device, &config, started),
            _ => SwapUnit::WholeSet,
        };
        let set_size = match unit {
            SwapUnit::WholeSet => initial.compiled_kernels() as u64,
            SwapUnit::Layers(_) => unit.kernels(&config),
        };
        let mut stats = DeliveryStats::default();
        if let SwapUnit::Layers(g) = unit {
            stats.layers_per_group = Some(g);
        }
        Delivery {
            strategy,
            scope,
            device,
            clock,
            unit,
            newest: None,
            group_swaps: Vec::new(),
            programs: initial.baked_programs(),
            active: initial,
            job: None,
            latest: None,
            max_staleness,
            max_failures,
            consecutive_failures: 0,
            set_size,
            budget_blocked: false,
            past_bound: false,
            count_host_time: false,
            stats,
            failures: Vec::new(),
        }
    }

    /// On a virtual clock, makes host work done here (staging) spend its real duration in
    /// virtual time too, as the trainer does with its own host work.
    pub fn counting_host_time(mut self, on: bool) -> Self {
        self.count_host_time = on;
        self
    }

    /// Called before the optimizer updates the master weights. Recompile and dynamic sets are
    /// rebuilt or restaged from the update's result anyway, so they let go of their weights
    /// now: the master weights they share are then updated in place instead of copied, which
    /// saves a copy of every parameter in memory and in time. Double-buffered and frozen sets
    /// keep running on their own version and keep it.
    ///
    /// A recompile set whose successor the compile budget cannot afford is kept: the run
    /// checkpoints and restarts after this update, and until then the old set still serves.
    pub fn release_before_update(&mut self) {
        let release = match self.strategy {
            Strategy::Recompile => self.budget_allows_a_set(),
            Strategy::Dynamic => true,
            Strategy::DoubleBuffer | Strategy::Frozen => false,
        };
        if release {
            self.active.release_weights();
        }
    }

    /// New master weights after an update.
    pub fn publish(&mut self, snapshot: WeightSnapshot) -> Result<(), StepError> {
        match self.strategy {
            Strategy::Recompile => {
                if !self.budget_allows_a_set() {
                    self.budget_blocked = true;
                    return Ok(());
                }
                let start = self.clock.now();
                // The old set is not needed once the new one exists: free it first, which
                // halves the peak memory of a recompile. A failed compile ends the run anyway.
                self.active.release_baked();
                let (set, kernels) = compile_baked(self.programs.as_ref(), self.device, snapshot);
                self.stats.kernels_compiled += kernels;
                let set = set?;
                self.stats.stall += self.clock.now().saturating_sub(start);
                self.active = set;
                Ok(())
            }
            Strategy::DoubleBuffer => {
                self.latest = Some(snapshot);
                self.start_if_idle();
                Ok(())
            }
            Strategy::Frozen => Ok(()),
            Strategy::Dynamic => {
                let start = Instant::now();
                self.active.stage(snapshot)?;
                let took = start.elapsed();
                self.stats.staging += took;
                if self.count_host_time && self.clock.is_simulated() {
                    self.clock.sleep(took);
                }
                Ok(())
            }
        }
    }

    /// The weights and layers the next background compile is for, if there is one to make:
    /// the newest published weights, for the whole set or for the group of the stalest layer.
    /// Nothing is taken: [`Delivery::start_if_idle`] takes it once the budget allows.
    fn next_compile(&mut self) -> Option<(WeightSnapshot, std::ops::Range<usize>)> {
        let layers = self.active.snapshot().params.layout.config.n_layers;
        match self.unit {
            SwapUnit::WholeSet => self.latest.clone().map(|s| (s, 0..layers)),
            SwapUnit::Layers(g) => {
                if let Some(latest) = self.latest.take() {
                    self.newest = Some(latest);
                }
                let newest = self.newest.clone()?;
                let versions = self.active.layer_versions();
                let (stalest, &version) = versions.iter().enumerate().min_by_key(|(_, v)| **v)?;
                if version >= newest.version {
                    return None;
                }
                let first = stalest / g * g;
                Some((newest, first..(first + g).min(layers)))
            }
        }
    }

    fn start_if_idle(&mut self) {
        if self.job.is_some() {
            return;
        }
        let Some((snapshot, layers)) = self.next_compile() else {
            return;
        };
        // What this compile costs: a whole set, or the group's own layers (the last group may
        // be short).
        let cost = match self.unit {
            SwapUnit::WholeSet => self.set_size,
            SwapUnit::Layers(_) => (layers.len() * KernelKind::WEIGHTED.len()) as u64,
        };
        if !self.budget_allows(cost) {
            self.budget_blocked = true;
            return;
        }
        if self.unit == SwapUnit::WholeSet {
            self.latest = None;
        }
        let whole = layers.len() == self.active.snapshot().params.layout.config.n_layers;
        let group = (!whole).then(|| layers.clone());
        let (device, clock, programs) = (self.device, self.clock, self.programs.clone());
        let submitted = clock.now();
        let snap = snapshot.clone();
        let priority = BackgroundThread::default();
        let thread = priority.clone();
        // The compile's virtual timeline starts when it was submitted; it reports when it
        // ended on that timeline, so the training thread can meet it there.
        // Named, so that profilers and debuggers show compiles apart from training.
        // A thread per compile, although starting one costs the training thread some time:
        // Linux starts a new thread on the idlest core, but wakes a sleeping one near its
        // waker, the training thread's busy core, where at idle priority it waits. One
        // long-lived compile thread on two cores often had not finished by the next step,
        // which then waited for it (docs/weight-delivery.md).
        let spawned = std::thread::Builder::new()
            .name("kernel-compile".into())
            .spawn_scoped(self.scope, move || {
                thread.enter();
                anetrain_device::trace::mark_background_thread();
                let cpu_start = thread_cpu_time();
                clock.advance_to(submitted);
                let start = clock.now();
                let (set, kernels) = match group {
                    None => {
                        let (set, kernels) = compile_baked(programs.as_ref(), device, snap);
                        (set.map(Compiled::Set), kernels)
                    }
                    Some(layers) => {
                        let (group, kernels) =
                            compile_group(programs.as_ref(), device, snap, layers);
                        (group.map(Compiled::Group), kernels)
                    }
                };
                let ended = clock.now();
                CompileResult {
                    set,
                    kernels,
                    took: ended.saturating_sub(start),
                    ended,
                    cpu: thread_cpu_time()
                        .zip(cpu_start)
                        .map(|(end, start)| end.saturating_sub(start)),
                }
            });
        let state = match spawned {
            Ok(handle) => JobState::Running(handle),
            // No thread, no compile: handled like a failed one (kept set, retried, counted).
            Err(e) => JobState::Finished(CompileResult::failed(
                StepError::Compile {
                    kernel: "background compile".into(),
                    source: anetrain_device::DeviceError::CompileFailed(format!(
                        "could not start the compile thread: {e}"
                    )),
                },
                submitted,
            )),
        };
        self.job = Some(Job {
            snapshot,
            layers,
            state,
            priority,
        });
    }

    /// Takes a finished compile (waiting for it if `wait`), swapping on success. A compile is
    /// finished for the trainer when its thread is done and its end time on the clock has come.
    fn collect(&mut self, wait: bool) -> Result<(), StepError> {
        let Some(job) = self.job.as_mut() else {
            return Ok(());
        };
        if let JobState::Running(handle) = &job.state {
            // On a real clock a compile still running is not done; on a virtual clock the
            // answer must not depend on real scheduling, so wait for the thread and compare
            // timelines below.
            if !wait && !self.clock.is_simulated() && !handle.is_finished() {
                return Ok(());
            }
            if wait {
                job.priority.raise();
            }
            let JobState::Running(handle) =
                std::mem::replace(&mut job.state, JobState::Finished(placeholder()))
            else {
                unreachable!("matched Running above");
            };
            job.state = JobState::Finished(handle.join().unwrap_or_else(|_| {
                CompileResult::failed(
                    StepError::Compile {
                        kernel: "background compile".into(),
                        source: anetrain_device::DeviceError::CompileFailed(
                            "the compile thread panicked".into(),
                        ),
                    },
                    Duration::ZERO,
                )
            }));
        }
        let JobState::Finished(CompileResult { ended, .. }) = &job.state else {
            unreachable!("the job was just finished");
        };
        if !wait && *ended > self.clock.now() {
            return Ok(());
        }
        let job = self.job.take().expect("checked above");
        let JobState::Finished(CompileResult {
            set,
            kernels,
            took,
            ended,
            cpu,
        }) = job.state
        else {
            unreachable!("the job was just finished");
        };
        self.clock.advance_to(ended);
        self.stats.kernels_compiled += kernels;
        self.stats.background_compile += took;
        self.stats.background_compile_cpu += cpu.unwrap_or_default();
        match set {
            Ok(Compiled::Set(set)) => {
                // A set becomes active only whole: every kernel of it compiled.
                self.active = set;
                self.stats.swaps += 1;
                self.consecutive_failures = 0;
            }
            Ok(Compiled::Group(group)) => {
                // Likewise a group: every kernel of its layers compiled.
                let swap = GroupSwap {
                    layers: group.layers(),
                    version: group.version(),
                };
                self.active.swap_in(group)?;
                self.group_swaps.push(swap);
                self.stats.swaps += 1;
                self.stats.group_swaps += 1;
                self.consecutive_failures = 0;
            }
            Err(e) => {
                self.stats.failed_compiles += 1;
                self.consecutive_failures += 1;
                let layers = self.active.snapshot().params.layout.config.n_layers;
                let what = if job.layers.len() == layers {
                    String::new()
                } else {
                    format!(" (layers {}..{})", job.layers.start, job.layers.end)
                };
                self.failures.push(format!(
                    "compile of weights version {}{what} failed: {e}",
                    job.snapshot.version
                ));
                if self.consecutive_failures >= self.max_failures {
                    return Err(e);
                }
                // Retry with the newest weights there are.
                if self.latest.is_none() {
                    self.latest = Some(job.snapshot);
                }
            }
        }
        self.start_if_idle();
        Ok(())
    }

    /// The kernel set for the step about to run on master version `master`; waits (stall)
    /// when the device weights would lag more than the allowed staleness.
    pub fn acquire(&mut self, master: u64) -> Result<&mut KernelSet, StepError> {
        if self.strategy == Strategy::DoubleBuffer {
            let mut waited = Duration::ZERO;
            let caught_up = self.wait_until_lag(master, self.staleness_bound(), &mut waited);
            self.stats.stall += waited;
            caught_up?;
        }
        let lag = master.saturating_sub(self.active.version());
        // Past the bound only counts where a compile could help: behind the newest weights
        // published (updates skipped for fp16 overflow publish none).
        let newest = match (self.unit, &self.newest) {
            (SwapUnit::Layers(_), Some(newest)) => newest.version.min(master),
            _ => master,
        };
        self.past_bound = newest.saturating_sub(self.active.version()) > self.staleness_bound();
        // A step the budget stops runs in the next process, and is counted there.
        if !self.restart_needed() {
            *self.stats.staleness.entry(lag).or_default() += 1;
        }
        Ok(&mut self.active)
    }

    /// The kernel set of master version `master`, for the validation that ends a run: a
    /// double buffer waits for the compile of the master weights (running, or started now),
    /// so that the run is judged on the weights it ends with, not on those one update behind.
    /// The wait is not a training stall and is not counted as one. When the budget cannot pay
    /// for the compile, the active set is all there is.
    pub fn catch_up(&mut self, master: u64) -> Result<&mut KernelSet, StepError> {
        if self.strategy == Strategy::DoubleBuffer {
            // Not a training stall: the wait is dropped.
            let mut waited = Duration::ZERO;
            self.wait_until_lag(master, 0, &mut waited)?;
        }
        Ok(&mut self.active)
    }

    /// Takes a finished compile, then waits for compiles (starting the newest published
    /// weights' when none runs) until the active set lags master version `master` by at most
    /// `bound`, or the budget stops the next compile. Adds the time spent waiting to `waited`
    /// as it goes, so that a failed compile still leaves it counted.
    fn wait_until_lag(
        &mut self,
        master: u64,
        bound: u64,
        waited: &mut Duration,
    ) -> Result<(), StepError> {
        self.collect(false)?;
        while master.saturating_sub(self.active.version()) > bound {
            self.start_if_idle();
            if self.job.is_none() {
                break;
            }
            let start = self.clock.now();
            self.collect(true)?;
            *waited += self.clock.now().saturating_sub(start);
        }
        Ok(())
    }

    /// The weights the next step runs on at master version `master`, as far as the schedule
    /// decides it: the compile it will have to wait for when the active set would lag too far,
    /// else the active set's. (A compile that lands sooner is a matter of timing, which a
    /// checkpoint cannot keep.)
    pub fn next_weights(&self, master: u64) -> &WeightSnapshot {
        // Swapping groups, the layers run on several versions, which a checkpoint cannot keep:
        // a new process starts on the newest weights, all layers alike.
        if let (SwapUnit::Layers(_), Some(newest)) = (self.unit, &self.newest) {
            return newest;
        }
        match &self.job {
            Some(job) if master.saturating_sub(self.active.version()) > self.staleness_bound() => {
                &job.snapshot
            }
            _ => self.active.snapshot(),
        }
    }

    /// How far the oldest layer may lag the master weights before a step waits: the allowed
    /// staleness, and in group swaps the updates a round of groups takes beyond one.
    fn staleness_bound(&self) -> u64 {
        let config = &self.active.snapshot().params.layout.config;
        self.max_staleness + self.unit.per_set(config) - 1
    }

    /// What the background swaps in at once.
    pub fn unit(&self) -> SwapUnit {
        self.unit
    }

    fn budget_allows_a_set(&self) -> bool {
        self.budget_allows(self.set_size)
    }

    fn budget_allows(&self, compiles: u64) -> bool {
        self.device
            .compile_budget()
            .is_none_or(|b| b.remaining() >= compiles)
    }

    /// True once the compile budget cannot pay for another kernel set, or, swapping groups,
    /// for the group the next step would wait for: the trainer must checkpoint and restart
    /// the process to go on. (A group swap restarts only when it must: the checkpoint keeps
    /// one weights version for the device, not one per layer, so a restarted run is not the
    /// one it continues bit for bit anyway.)
    pub fn restart_needed(&self) -> bool {
        self.budget_blocked && (self.unit == SwapUnit::WholeSet || self.past_bound)
    }

    /// Waits for any background compile (at the end of a run, or before a restart). Its set
    /// is not used, but the compiles it made are counted.
    pub fn drain(&mut self) {
        let Some(job) = self.job.take() else {
            return;
        };
        let result = match job.state {
            JobState::Running(handle) => {
                job.priority.raise();
                handle.join().ok()
            }
            JobState::Finished(result) => Some(result),
        };
        if let Some(r) = result {
            self.stats.kernels_compiled += r.kernels;
            self.stats.background_compile += r.took;
            self.stats.background_compile_cpu += r.cpu.unwrap_or_default();
        }
    }

    pub fn active(&mut self) -> &mut KernelSet {
        &mut self.active
    }
}

/// A baked set of the snapshot's weights, from the run's programs when it has them.
/// Also returns the compiles it used: a whole set's, or a failed set's up to the kernel that
/// failed.
fn compile_baked(
    programs: Option<&Arc<BakedPrograms>>,
    device: &dyn Device,
    snapshot: WeightSnapshot,
) -> (Result<KernelSet, StepError>, u64) {
    let counted = CountedCompiles {
        device,
        count: AtomicU64::new(0),
    };
    let set = match programs {
        Some(programs) => programs.compile_set(&counted, snapshot),
        None => compile_kernel_set(&counted, snapshot),
    };
    (set, counted.count.load(Ordering::Relaxed))
}

/// The kernels of `layers` compiled from the snapshot, with the compiles used.
fn compile_group(
    programs: Option<&Arc<BakedPrograms>>,
    device: &dyn Device,
    snapshot: WeightSnapshot,
    layers: std::ops::Range<usize>,
) -> (Result<LayerGroup, StepError>, u64) {
    let counted = CountedCompiles {
        device,
        count: AtomicU64::new(0),
    };
    let group = match programs {
        Some(programs) => programs.compile_layers(&counted, snapshot, layers),
        None => Err(StepError::BakedWeights {
            version: snapshot.version,
        }),
    };
    (group, counted.count.load(Ordering::Relaxed))
}

/// The unit a double buffer on `device` swaps in, before the run compiles anything: whole
/// sets, unless two pass the chip's loaded-kernel limit or what is left of the process's
/// compile budget.
pub fn double_buffer_unit(device: &dyn Device, config: &ModelConfig) -> SwapUnit {
    swap_unit(device, config, 0)
}

/// [`double_buffer_unit`] once the process has made `compiled` compiles for its start.
fn swap_unit(device: &dyn Device, config: &ModelConfig, compiled: u64) -> SwapUnit {
    let loaded = device
        .chip_rules()
        .and_then(|r| r.max_loaded_kernels())
        .map(|(n, _)| n as u64);
    let budget = device.compile_budget().map(|b| b.remaining() + compiled);
    // Where not even one layer fits, the run was refused before it started.
    SwapUnit::largest(config, loaded, budget).unwrap_or(SwapUnit::Layers(1))
}

/// Counts the compiles it passes to a device.
struct CountedCompiles<'d> {
    device: &'d dyn Device,
    count: AtomicU64,
}

impl Decorator for CountedCompiles<'_> {
    fn wrapped(&self) -> &dyn Device {
        self.device
    }

    fn around_compile(
        &self,
        _program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        compile()
    }
}

/// A stand-in result while a job moves from running to finished.
fn placeholder() -> CompileResult {
    CompileResult::failed(
        StepError::Compile {
            kernel: String::new(),
            source: anetrain_device::DeviceError::CompileFailed(String::new()),
        },
        Duration::ZERO,
    )
}

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
    compile_dynamic_kernel_set, compile_kernel_set, BakedPrograms, KernelSet, SharedKernel,
    StepError, WeightSnapshot,
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

    /// Kernels a run of this strategy holds loaded at once, the shared kernel included: a
    /// double buffer holds two sets while the next compiles; a recompile frees its set first.
    pub fn kernels_loaded_at_once(self, config: &ModelConfig) -> u64 {
        let sets = match self {
            Strategy::DoubleBuffer => 2,
            Strategy::Recompile | Strategy::Dynamic | Strategy::Frozen => 1,
        };
        SharedKernel::COMPILES as u64 + sets * self.kernels_per_set(config)
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
    pub swaps: u64,
    pub failed_compiles: u64,
    /// Steps by how many updates the device weights lagged the master weights.
    pub staleness: BTreeMap<u64, u64>,
}

/// A finished compile: the set (or why there is none), how long it took and when it ended on
/// the clock, and the CPU time its thread used where that can be measured.
struct CompileResult {
    set: Result<KernelSet, StepError>,
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
    /// Kernels in one set: what one more compile of the weights costs of the budget.
    set_size: u64,
    /// The device's compile budget cannot pay for the next set: the process must restart.
    restart_needed: bool,
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
        let set_size = initial.compiled_kernels() as u64;
        Delivery {
            strategy,
            scope,
            device,
            clock,
            programs: initial.baked_programs(),
            active: initial,
            job: None,
            latest: None,
            max_staleness,
            max_failures,
            consecutive_failures: 0,
            set_size,
            restart_needed: false,
            count_host_time: false,
            stats: DeliveryStats::default(),
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
                    self.restart_needed = true;
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

    fn start_if_idle(&mut self) {
        if self.job.is_some() {
            return;
        }
        if self.latest.is_none() {
            return;
        }
        if !self.budget_allows_a_set() {
            self.restart_needed = true;
            return;
        }
        let Some(snapshot) = self.latest.take() else {
            return;
        };
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
                let (set, kernels) = compile_baked(programs.as_ref(), device, snap);
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
            Ok(set) => {
                // A set becomes active only whole: every kernel of it compiled.
                self.active = set;
                self.stats.swaps += 1;
                self.consecutive_failures = 0;
            }
            Err(e) => {
                self.stats.failed_compiles += 1;
                self.consecutive_failures += 1;
                self.failures.push(format!(
                    "compile of weights version {} failed: {e}",
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
            let caught_up = self.wait_until_lag(master, self.max_staleness, &mut waited);
            self.stats.stall += waited;
            caught_up?;
        }
        let lag = master.saturating_sub(self.active.version());
        *self.stats.staleness.entry(lag).or_default() += 1;
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
        match &self.job {
            Some(job) if master.saturating_sub(self.active.version()) > self.max_staleness => {
                &job.snapshot
            }
            _ => self.active.snapshot(),
        }
    }

    fn budget_allows_a_set(&self) -> bool {
        self.device
            .compile_budget()
            .is_none_or(|b| b.remaining() >= self.set_size)
    }

    /// True once the compile budget cannot pay for another kernel set: the trainer must
    /// checkpoint and restart the process to go on.
    pub fn restart_needed(&self) -> bool {
        self.restart_needed
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

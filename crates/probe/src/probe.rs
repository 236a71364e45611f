//! The probe suite: what a device's compile and eval cost, and whether they run in parallel.
//! These are the facts the double-buffered trainer rests on (DESIGN.md, spec section 6), so
//! every figure comes from timestamps taken while the work runs, on kernels whose results are
//! checked.

use crate::error::ProbeError;
use crate::kernels::ConvChain;
use crate::stats::{self, Interval, Spread};
use crate::testbed::{LoadedKernel, Testbed};
use anetrain_device::DeviceInfo;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const EVAL_THROUGHPUT: &str = "test 1 (pure eval throughput)";
pub const PING_PONG: &str = "test 2 (ping-pong)";
pub const SEQUENTIAL_COMPILE: &str = "test 3 (sequential compile)";
pub const BACKGROUND_OVERLAP: &str = "test 4 (background compile overlap)";
pub const LOADED_AT_ONCE: &str = "kernels loaded at once";

/// Drift is the median compile time of the last few compiles over that of the first few;
/// outside these bounds compile time is said to drift.
pub const DRIFT_BOUNDS: (f64, f64) = (0.8, 1.25);
/// How many compiles at each end the drift compares (fewer when there are fewer than twice
/// as many compiles).
pub const DRIFT_WINDOW: usize = 5;
/// The foreground must keep at least this fraction of its undisturbed eval rate during a
/// background compile for the two to count as overlapped.
pub const OVERLAP_KEPT_RATE: f64 = 0.5;
/// A compile shorter than this many undisturbed evals is too short to judge overlap from: with
/// fewer, one eval more or less inside the window swings the kept rate across the threshold.
pub const OVERLAP_MIN_EVALS: u32 = 4;

/// What to run. The defaults are the original probes' sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Channels of the 1×1 conv every test uses (128 in the original).
    pub channels: usize,
    /// Spatial size of that conv (64 in the original).
    pub spatial: usize,
    /// Untimed evals of a kernel before it is timed.
    pub warmup_evals: usize,
    /// Timed evals in test 1.
    pub evals: usize,
    /// Timed pairs in test 2.
    pub pairs: usize,
    /// Kernels compiled in test 3.
    pub compiles: usize,
    /// The most kernels the loaded-at-once count tries to hold.
    pub max_loaded: usize,
    /// How long, by the clock, test 4 waits for the background compile.
    pub background_timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> ProbeConfig {
        ProbeConfig {
            channels: 128,
            spatial: 64,
            warmup_evals: 10,
            evals: 1000,
            pairs: 500,
            compiles: 20,
            max_loaded: 64,
            background_timeout: Duration::from_secs(60),
        }
    }
}

impl ProbeConfig {
    fn invalid_reason(&self) -> Option<String> {
        let probe_kernel = ConvChain::numbered(self.channels, self.spatial, 0);
        if let Some(reason) = probe_kernel.invalid_reason() {
            return Some(reason);
        }
        let at_least_one = [
            ("warm-up evals", self.warmup_evals),
            ("evals", self.evals),
            ("pairs", self.pairs),
            ("max loaded", self.max_loaded),
        ];
        if let Some((name, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Some(format!("{name} must be at least 1"));
        }
        if self.compiles < 2 {
            return Some("compiles must be at least 2 to tell drift".into());
        }
        None
    }
}

/// Test 1: one kernel evaluated over and over.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalThroughput {
    pub warmup_evals: usize,
    pub evals: usize,
    /// From the start of the first timed eval to the end of the last.
    pub total: Duration,
    /// `total / evals`.
    pub per_eval: Duration,
    /// Of the single evals.
    pub spread: Spread,
    /// FLOP/s sustained over `total`.
    pub flops_per_second: f64,
}

/// Test 2: two kernels evaluated alternately.
#[derive(Clone, Debug, PartialEq)]
pub struct PingPong {
    pub pairs: usize,
    pub total: Duration,
    pub per_pair: Duration,
    pub per_eval: Duration,
    /// Of the pairs.
    pub pair_spread: Spread,
    /// How much longer the median pair takes than two median evals of test 1, in percent
    /// (medians, so that one stall on a busy host does not decide it).
    pub overhead_percent: f64,
}

/// Whether compile time changes over a run of compiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftVerdict {
    None,
    SlowsDown,
    SpeedsUp,
}

impl DriftVerdict {
    pub fn name(self) -> &'static str {
        match self {
            DriftVerdict::None => "none",
            DriftVerdict::SlowsDown => "slows down",
            DriftVerdict::SpeedsUp => "speeds up",
        }
    }
}

/// Test 3: kernels with different weights compiled one after another.
#[derive(Clone, Debug, PartialEq)]
pub struct SequentialCompile {
    /// Each compile, in order.
    pub times: Vec<Duration>,
    pub spread: Spread,
    /// How many compiles at each end the drift compares.
    pub drift_window: usize,
    /// Median of the last `drift_window` compiles over the median of the first.
    pub drift_ratio: f64,
    pub drift: DriftVerdict,
}

/// What the timestamps of test 4 say about compile and eval running in parallel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlapVerdict {
    /// The foreground kept at least [`OVERLAP_KEPT_RATE`] of its eval rate during the compile.
    Overlapped,
    /// Some foreground evals completed inside the compile, at a lower rate.
    PartlyOverlapped,
    /// No foreground eval completed inside the compile.
    Serialized,
    /// The compile was shorter than [`OVERLAP_MIN_EVALS`] evals: too short to tell.
    Undetermined,
}

impl OverlapVerdict {
    pub fn name(self) -> &'static str {
        match self {
            OverlapVerdict::Overlapped => "overlapped",
            OverlapVerdict::PartlyOverlapped => "partly overlapped",
            OverlapVerdict::Serialized => "serialized",
            OverlapVerdict::Undetermined => "undetermined",
        }
    }

    /// The summary's "parallel compile + eval" answer.
    pub fn parallel(self) -> &'static str {
        match self {
            OverlapVerdict::Overlapped => "yes",
            OverlapVerdict::PartlyOverlapped => "partly",
            OverlapVerdict::Serialized => "no",
            OverlapVerdict::Undetermined => "undetermined",
        }
    }
}

/// Test 4: a compile on a background thread while the foreground evaluates another kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct BackgroundOverlap {
    /// The background compile, start to end.
    pub compile_window: Interval,
    /// Foreground evals from the background thread's start until the compile had finished.
    pub foreground_evals: usize,
    /// Of those, the ones that started and ended inside the compile window.
    pub evals_inside: usize,
    /// Of the evals inside the window; `None` when there were none.
    pub latency_inside: Option<Spread>,
    /// Median eval inside the window over the median eval of test 1.
    pub latency_ratio: f64,
    /// Evals that would fit in the window at test 1's median eval time.
    pub undisturbed_fit: f64,
    /// `evals_inside / undisturbed_fit`.
    pub kept_rate: f64,
    pub verdict: OverlapVerdict,
}

impl BackgroundOverlap {
    pub fn compile(&self) -> Duration {
        self.compile_window.len()
    }
}

/// How many kernels the device held at once, all checked after the last was loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedAtOnce {
    pub loaded: usize,
    pub cap: usize,
    /// The compile error that stopped the count before the cap, if one did.
    pub stopped_by: Option<String>,
}

/// Everything the probe measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    pub device: DeviceInfo,
    /// True when the figures are modelled (virtual clock or latency model), not measured.
    pub simulated: bool,
    pub clock_simulated: bool,
    pub config: ProbeConfig,
    /// The shape every test uses (test 1's kernel).
    pub kernel: ConvChain,
    pub eval_throughput: EvalThroughput,
    pub ping_pong: PingPong,
    pub sequential_compile: SequentialCompile,
    pub background_overlap: BackgroundOverlap,
    pub loaded_at_once: LoadedAtOnce,
    /// Compiles the whole probe attempted (the ANE allows about 119 per process).
    pub compiles_attempted: usize,
}

impl ProbeReport {
    /// The summary's compile time: the median of test 3.
    pub fn compile_time(&self) -> Duration {
        self.sequential_compile.spread.median
    }

    /// The summary's eval time: test 1's median eval.
    pub fn eval_time(&self) -> Duration {
        self.eval_throughput.spread.median
    }

    /// How many evals one compile costs.
    pub fn compile_to_eval(&self) -> f64 {
        stats::ratio(self.compile_time(), self.eval_time())
    }
}

/// Runs the four tests and the loaded-at-once count, in that order, on `bed`.
pub fn run_probe(bed: &Testbed, config: &ProbeConfig) -> Result<ProbeReport, ProbeError> {
    if let Some(message) = config.invalid_reason() {
        return Err(ProbeError::Settings {
            stage: "probe",
            message,
        });
    }
    let mut numbers = KernelNumbers::default();
    let (c, s) = (config.channels, config.spatial);
    let mut first = compile_numbered(bed, EVAL_THROUGHPUT, c, s, numbers.next())?;
    let eval_throughput = eval_throughput(bed, &mut first, config)?;
    let mut second = compile_numbered(bed, PING_PONG, c, s, numbers.next())?;
    let ping_pong = ping_pong(bed, [&mut first, &mut second], config, &eval_throughput)?;
    drop(second);
    let sequential_compile = sequential_compile(bed, config, &mut numbers)?;
    let background_overlap =
        background_overlap(bed, &mut first, config, &eval_throughput, numbers.next())?;
    let kernel = first.chain.clone();
    // The count starts from an empty device: earlier tests' kernels are gone by now.
    drop(first);
    let loaded_at_once = loaded_at_once(bed, config, &mut numbers)?;
    Ok(ProbeReport {
        device: bed.device.info(),
        simulated: bed.is_simulated(),
        clock_simulated: bed.clock.is_simulated(),
        config: config.clone(),
        kernel,
        eval_throughput,
        ping_pong,
        sequential_compile,
        background_overlap,
        loaded_at_once,
        compiles_attempted: bed.compiles_attempted(),
    })
}

/// Hands out kernel numbers, so that no two kernels of a run share weights.
#[derive(Default)]
struct KernelNumbers(usize);

impl KernelNumbers {
    fn next(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }
}

fn compile_numbered(
    bed: &Testbed,
    stage: &'static str,
    channels: usize,
    spatial: usize,
    number: usize,
) -> Result<LoadedKernel, ProbeError> {
    Ok(compile_numbered_timed(bed, stage, channels, spatial, number)?.0)
}

fn compile_numbered_timed(
    bed: &Testbed,
    stage: &'static str,
    channels: usize,
    spatial: usize,
    number: usize,
) -> Result<(LoadedKernel, Interval), ProbeError> {
    let chain = ConvChain::numbered(channels, spatial, number);
    bed.compile(stage, format!("kernel {number} ({chain})"), chain)
}

/// Untimed evals, each result checked: nothing is timed before it is known to compute the
/// right thing. (Timed evals are not checked one by one, which would put the check inside the
/// timing; the last result of every timed run is.)
fn warm_up(
    bed: &Testbed,
    stage: &'static str,
    kernel: &mut LoadedKernel,
    evals: usize,
) -> Result<(), ProbeError> {
    for _ in 0..evals {
        bed.eval_and_verify(stage, kernel)?;
    }
    Ok(())
}

fn eval_throughput(
    bed: &Testbed,
    kernel: &mut LoadedKernel,
    config: &ProbeConfig,
) -> Result<EvalThroughput, ProbeError> {
    warm_up(bed, EVAL_THROUGHPUT, kernel, config.warmup_evals)?;
    let evals = bed.eval_repeatedly(EVAL_THROUGHPUT, kernel, config.evals)?;
    kernel.verify(EVAL_THROUGHPUT)?;
    let total = stats::span(&evals);
    Ok(EvalThroughput {
        warmup_evals: config.warmup_evals,
        evals: evals.len(),
        total,
        per_eval: stats::per_item(total, evals.len()),
        spread: spread_of(&evals),
        flops_per_second: stats::flops_per_second(kernel.chain.flops(), evals.len(), total),
    })
}

/// The spread of a non-empty run of intervals (the settings guarantee at least one).
fn spread_of(intervals: &[Interval]) -> Spread {
    Spread::of_intervals(intervals).unwrap_or(Spread::ZERO)
}

fn ping_pong(
    bed: &Testbed,
    [first, second]: [&mut LoadedKernel; 2],
    config: &ProbeConfig,
    baseline: &EvalThroughput,
) -> Result<PingPong, ProbeError> {
    warm_up(bed, PING_PONG, second, config.warmup_evals)?;
    let mut pairs = Vec::with_capacity(config.pairs);
    for _ in 0..config.pairs {
        let a = bed.eval(PING_PONG, first)?;
        let b = bed.eval(PING_PONG, second)?;
        pairs.push(Interval {
            start: a.start,
            end: b.end,
        });
    }
    first.verify(PING_PONG)?;
    second.verify(PING_PONG)?;
    let total = stats::span(&pairs);
    let evals = 2 * pairs.len();
    let pair_spread = spread_of(&pairs);
    Ok(PingPong {
        pairs: pairs.len(),
        total,
        per_pair: stats::per_item(total, pairs.len()),
        per_eval: stats::per_item(total, evals),
        overhead_percent: (stats::rate_ratio(pair_spread.median, 2, baseline.spread.median, 1)
            - 1.0)
            * 100.0,
        pair_spread,
    })
}

fn sequential_compile(
    bed: &Testbed,
    config: &ProbeConfig,
    numbers: &mut KernelNumbers,
) -> Result<SequentialCompile, ProbeError> {
    let (c, s) = (config.channels, config.spatial);
    // All stay loaded until the end, so the last compiles run with the others resident.
    let mut kernels = Vec::with_capacity(config.compiles);
    let mut times = Vec::with_capacity(config.compiles);
    for _ in 0..config.compiles {
        let (mut kernel, compile) =
            compile_numbered_timed(bed, SEQUENTIAL_COMPILE, c, s, numbers.next())?;
        bed.eval_and_verify(SEQUENTIAL_COMPILE, &mut kernel)?;
        times.push(compile.len());
        kernels.push(kernel);
    }
    let (drift_window, drift_ratio, drift) = drift(&times);
    Ok(SequentialCompile {
        spread: Spread::of(times.iter().copied()).unwrap_or(Spread::ZERO),
        times,
        drift_window,
        drift_ratio,
        drift,
    })
}

/// Compares the median of the last few compile times with that of the first few: medians,
/// so that one stall does not make a drift. Returns how many were compared at each end, the
/// ratio and the verdict.
fn drift(times: &[Duration]) -> (usize, f64, DriftVerdict) {
    let window = DRIFT_WINDOW.min(times.len() / 2);
    let median = |part: &[Duration]| Spread::of(part.iter().copied()).map(|s| s.median);
    let ratio = match (
        median(&times[..window]),
        median(&times[times.len() - window..]),
    ) {
        (Some(first), Some(last)) => stats::ratio(last, first),
        _ => f64::NAN,
    };
    let verdict = if ratio > DRIFT_BOUNDS.1 {
        DriftVerdict::SlowsDown
    } else if ratio < DRIFT_BOUNDS.0 {
        DriftVerdict::SpeedsUp
    } else {
        DriftVerdict::None
    };
    (window, ratio, verdict)
}

fn background_overlap(
    bed: &Testbed,
    foreground: &mut LoadedKernel,
    config: &ProbeConfig,
    baseline: &EvalThroughput,
    number: usize,
) -> Result<BackgroundOverlap, ProbeError> {
    let started = bed.clock.now();
    let compiled_at: Arc<OnceLock<Duration>> = Arc::new(OnceLock::new());
    let receiver = spawn_background_compile(bed, config, number, started, compiled_at.clone());
    let evals = evaluate_until_compiled(bed, foreground, &compiled_at, started, config)?;
    let (mut background, window) = receiver.recv().map_err(|_| ProbeError::BackgroundLost {
        stage: BACKGROUND_OVERLAP,
    })??;
    bed.clock.advance_to(window.end);
    foreground.verify(BACKGROUND_OVERLAP)?;
    bed.eval_and_verify(BACKGROUND_OVERLAP, &mut background)?;
    Ok(judge_overlap(&evals, window, baseline))
}

/// Starts the background compile on its own thread. The thread's timeline begins where the
/// foreground's stood at `started`; it records the time its compile ended in `compiled_at`
/// (failed or not, so the foreground stops) and sends the kernel back.
///
/// A detached thread rather than a scoped one: if the compile hangs, the foreground can give
/// up and report it instead of waiting forever.
fn spawn_background_compile(
    bed: &Testbed,
    config: &ProbeConfig,
    number: usize,
    started: Duration,
    compiled_at: Arc<OnceLock<Duration>>,
) -> mpsc::Receiver<Result<(LoadedKernel, Interval), ProbeError>> {
    let (sender, receiver) = mpsc::channel();
    let bed = bed.clone();
    let (c, s) = (config.channels, config.spatial);
    std::thread::spawn(move || {
        bed.clock.advance_to(started);
        let result = compile_numbered_timed(&bed, BACKGROUND_OVERLAP, c, s, number);
        let end = match &result {
            Ok((_, window)) => window.end,
            Err(_) => bed.clock.now(),
        };
        // Send first: once `compiled_at` is set the foreground may stop and wait for this.
        let _ = sender.send(result);
        let _ = compiled_at.set(end);
    });
    receiver
}

/// Evaluates `kernel` until the background compile has finished by the clock: the thread
/// has said so and the foreground's own time has reached the compile's end. On a virtual
/// clock the second condition is what keeps the foreground going for exactly the compile's
/// length, however fast the host runs either thread.
fn evaluate_until_compiled(
    bed: &Testbed,
    kernel: &mut LoadedKernel,
    compiled_at: &OnceLock<Duration>,
    started: Duration,
    config: &ProbeConfig,
) -> Result<Vec<Interval>, ProbeError> {
    let mut evals = Vec::new();
    loop {
        let now = bed.clock.now();
        match compiled_at.get() {
            Some(&end) if now >= end => return Ok(evals),
            None if now.saturating_sub(started) > config.background_timeout => {
                return Err(ProbeError::BackgroundTimeout {
                    stage: BACKGROUND_OVERLAP,
                    waited: now.saturating_sub(started),
                })
            }
            _ => evals.push(bed.eval(BACKGROUND_OVERLAP, kernel)?),
        }
    }
}

/// The overlap figures and verdict, from the foreground evals' timestamps and the compile
/// window: only evals that started and ended inside the window count.
fn judge_overlap(
    evals: &[Interval],
    window: Interval,
    baseline: &EvalThroughput,
) -> BackgroundOverlap {
    let inside: Vec<Interval> = evals
        .iter()
        .copied()
        .filter(|e| e.lies_within(&window))
        .collect();
    let latency_inside = Spread::of_intervals(&inside);
    let latency_ratio =
        latency_inside.map_or(f64::NAN, |l| stats::ratio(l.median, baseline.spread.median));
    let undisturbed_fit = stats::ratio(window.len(), baseline.spread.median);
    let kept_rate = inside.len() as f64 / undisturbed_fit;
    let verdict = if window.len() < baseline.spread.median * OVERLAP_MIN_EVALS {
        OverlapVerdict::Undetermined
    } else if kept_rate >= OVERLAP_KEPT_RATE {
        OverlapVerdict::Overlapped
    } else if inside.is_empty() {
        OverlapVerdict::Serialized
    } else {
        OverlapVerdict::PartlyOverlapped
    };
    BackgroundOverlap {
        compile_window: window,
        foreground_evals: evals.len(),
        evals_inside: inside.len(),
        latency_inside,
        latency_ratio,
        undisturbed_fit,
        kept_rate,
        verdict,
    }
}

fn loaded_at_once(
    bed: &Testbed,
    config: &ProbeConfig,
    numbers: &mut KernelNumbers,
) -> Result<LoadedAtOnce, ProbeError> {
    let (c, s) = (config.channels, config.spatial);
    let mut kernels = Vec::with_capacity(config.max_loaded);
    let mut stopped_by = None;
    while kernels.len() < config.max_loaded {
        match compile_numbered(bed, LOADED_AT_ONCE, c, s, numbers.next()) {
            Ok(kernel) => kernels.push(kernel),
            // Running out of room is what this count measures, not a failure of the probe.
            Err(ProbeError::Compile { kernel, error, .. }) => {
                stopped_by = Some(format!("compiling {kernel} failed: {error}"));
                break;
            }
            Err(other) => return Err(other),
        }
    }
    for kernel in &mut kernels {
        bed.eval_and_verify(LOADED_AT_ONCE, kernel)?;
    }
    Ok(LoadedAtOnce {
        loaded: kernels.len(),
        cap: config.max_loaded,
        stopped_by,
    })
}

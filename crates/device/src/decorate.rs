//! Decorators that wrap any [`Device`] for tests and simulation: a compile budget like the
//! ANE's per-process limit, a latency model of a named chip, and fault injection. Each is a
//! small type around a device; they stack (`FaultInjection<LatencyModel<CompileBudget<CpuDevice>>>`).
//!
//! A decorator implements [`Decorator`], not [`Device`]: it says what it adds around the device
//! it wraps, and [`Device`] follows for every decorator from one implementation that forwards
//! everything else. So a decorator cannot forget a method of the trait: one that says nothing
//! about a compile, say, passes every compile through, prepared or not.

use crate::ane::chip::{self, Chip};
use crate::ane::rules::{ChipRules, Rule};
use crate::clock::Clock;
use crate::{BudgetStatus, Device, DeviceError, DeviceInfo, Kernel, PreparedProgram};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::check::check_program;
use anetrain_mil::{cost, Program};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A device around another device. Each method says what the decorator adds to one kind of
/// call; by default it adds nothing. Every decorator is a [`Device`].
pub trait Decorator: Send + Sync {
    /// The device this one wraps.
    fn wrapped(&self) -> &dyn Device;

    /// What this device says it is, given what the wrapped one says.
    fn describe(&self, wrapped: DeviceInfo) -> DeviceInfo {
        wrapped
    }

    /// This device's compile budget, given the wrapped one's.
    fn limit_budget(&self, wrapped: Option<BudgetStatus>) -> Option<BudgetStatus> {
        wrapped
    }

    /// This device's chip rules, given the wrapped one's.
    fn rules_in_force(&self, wrapped: Option<ChipRules>) -> Option<ChipRules> {
        wrapped
    }

    /// One compile of `program`, whether of the program or of its prepared form: `compile`
    /// makes it on the wrapped device.
    fn around_compile(
        &self,
        program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        let _ = program;
        compile()
    }

    /// One eval: `eval` runs it on the wrapped device.
    fn around_eval(
        &self,
        kernel: &mut Kernel,
        outputs: &mut [&mut [f32]],
        eval: impl FnOnce(&mut Kernel, &mut [&mut [f32]]) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        eval(kernel, outputs)
    }
}

impl<T: Decorator> Device for T {
    fn info(&self) -> DeviceInfo {
        self.describe(self.wrapped().info())
    }

    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Kernel, DeviceError> {
        self.around_compile(program, || self.wrapped().compile(program, weights))
    }

    fn prepare(&self, program: &Program) -> PreparedProgram {
        self.wrapped().prepare(program)
    }

    fn compile_prepared(
        &self,
        prepared: &PreparedProgram,
        weights: &WeightFiles,
    ) -> Result<Kernel, DeviceError> {
        self.around_compile(prepared.program(), || {
            self.wrapped().compile_prepared(prepared, weights)
        })
    }

    fn compile_budget(&self) -> Option<BudgetStatus> {
        self.limit_budget(self.wrapped().compile_budget())
    }

    fn chip_rules(&self) -> Option<ChipRules> {
        self.rules_in_force(self.wrapped().chip_rules())
    }

    fn eval(
        &self,
        kernel: &mut Kernel,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), DeviceError> {
        self.around_eval(kernel, outputs, |kernel, outputs| {
            self.wrapped().eval(kernel, inputs, outputs)
        })
    }
}

/// Refuses compiles beyond a budget, as the ANE does after about 119 compiles per process.
/// Every attempt counts, failed or not: the ANE's leak is per attempt.
pub struct CompileBudget<D> {
    inner: D,
    budget: u64,
    used: AtomicU64,
}

impl<D: Device> CompileBudget<D> {
    pub fn new(inner: D, budget: u64) -> Self {
        CompileBudget {
            inner,
            budget,
            used: AtomicU64::new(0),
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub fn remaining(&self) -> u64 {
        self.budget.saturating_sub(self.used())
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Takes one compile of the budget, or says it is spent.
    fn claim(&self) -> Result<(), DeviceError> {
        let claimed = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u < self.budget).then_some(u + 1)
            });
        claimed
            .map(|_| ())
            .map_err(|_| DeviceError::BudgetExhausted {
                used: self.used(),
                budget: self.budget,
            })
    }
}

impl<D: Device> Decorator for CompileBudget<D> {
    fn wrapped(&self) -> &dyn Device {
        &self.inner
    }

    fn around_compile(
        &self,
        _program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        self.claim()?;
        compile()
    }

    fn limit_budget(&self, wrapped: Option<BudgetStatus>) -> Option<BudgetStatus> {
        let own = BudgetStatus {
            used: self.used(),
            budget: self.budget,
        };
        // The tighter of this budget and any the wrapped device has.
        Some(match wrapped {
            Some(inner) if inner.remaining() < own.remaining() => inner,
            _ => own,
        })
    }
}

/// Compile and eval latencies of a chip, as a function of what a kernel holds and computes.
#[derive(Clone, Debug, PartialEq)]
pub struct ChipProfile {
    pub name: &'static str,
    /// The chip's row in the chip table: its rules.
    pub chip: &'static Chip,
    /// Compile time of a kernel with no weights.
    pub compile_base: Duration,
    /// Extra compile time per MB (10⁶ bytes) of baked weights, as the chip stores them.
    pub compile_per_mb: Duration,
    /// Bytes the chip stores per baked weight value, whatever the program's dtype: a CPU run
    /// in fp32 stands for an ANE run, whose kernels bake fp16, and must be charged that.
    pub bytes_per_weight: u64,
    /// Fixed cost of one eval (dispatch, I/O).
    pub eval_base: Duration,
    /// Sustained FLOP/s of evals beyond the fixed cost.
    pub eval_flops: f64,
}

impl ChipProfile {
    /// Apple M4, fitted to the probe numbers the design rests on: a 128×128 conv (32 KB of
    /// weights) compiles in ~25 ms and evaluates in 0.189 ms; the five weight-bearing Stories110M
    /// layer kernels (5.6 MB on average) take ~57 ms each, so a 60-kernel set takes ~3.4 s; the
    /// training kernels sustain about 1 TFLOPS (the original measured 0.87–1.15).
    pub fn m4() -> ChipProfile {
        ChipProfile {
            name: "m4",
            chip: chip::by_name("m4").expect("the M4 is in the chip table"),
            compile_base: Duration::from_micros(24_800),
            compile_per_mb: Duration::from_micros(5_700),
            bytes_per_weight: 2,
            eval_base: Duration::from_micros(187),
            eval_flops: 1.0e12,
        }
    }

    /// The names of the chips with a profile: the base chip of each generation.
    pub const NAMES: [&'static str; 5] = ["m1", "m2", "m3", "m4", "m5"];

    /// Profiles by name, for `--simulate NAME`. Only the M4's timings are fitted to
    /// measurements; the others take the M4's compile times and scale its eval throughput by
    /// their rated fp16 figure (the M5, with none published, keeps the M4's). Each checks its
    /// own chip's rules.
    pub fn by_name(name: &str) -> Option<ChipProfile> {
        let name = *Self::NAMES.iter().find(|n| **n == name)?;
        let chip = chip::by_name(name)?;
        let m4 = ChipProfile::m4();
        let m4_rated = m4.chip.rated.map(|r| r.fp16_flops());
        let scale = match (chip.rated, m4_rated) {
            (Some(r), Some(m4_flops)) => r.fp16_flops() / m4_flops,
            _ => 1.0,
        };
        Some(ChipProfile {
            name,
            chip,
            eval_flops: m4.eval_flops * scale,
            ..m4
        })
    }

    /// Compile time of a kernel baking `weights` values.
    pub fn compile_time(&self, weights: u64) -> Duration {
        let bytes = weights * self.bytes_per_weight;
        self.compile_base + self.compile_per_mb.mul_f64(bytes as f64 / 1e6)
    }

    pub fn eval_time(&self, flops: u64) -> Duration {
        self.eval_base + Duration::from_secs_f64(flops as f64 / self.eval_flops)
    }
}

/// Refuses what a chip's Neural Engine would refuse, before the wrapped device compiles it: a
/// simulated chip checks the rules the ANE device checks, and holds no more kernels loaded at
/// once than the chip's `loaded-kernels` rule allows.
pub struct RuleCheck<D> {
    inner: D,
    rules: ChipRules,
    /// Kernels compiled through this device and not yet dropped, and the most there were.
    loaded: Arc<AtomicUsize>,
    peak: AtomicUsize,
}

impl<D: Device> RuleCheck<D> {
    pub fn new(inner: D, rules: ChipRules) -> Self {
        RuleCheck {
            inner,
            rules,
            loaded: Arc::new(AtomicUsize::new(0)),
            peak: AtomicUsize::new(0),
        }
    }

    pub fn rules(&self) -> &ChipRules {
        &self.rules
    }

    /// Kernels loaded now.
    pub fn loaded(&self) -> usize {
        self.loaded.load(Ordering::SeqCst)
    }

    /// The most kernels that were loaded at once.
    pub fn peak_loaded(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Takes a slot for one more kernel, or names the rule that refuses it.
    fn claim_slot(&self) -> Result<LoadedSlot, DeviceError> {
        let limit = self.rules.max_loaded_kernels();
        let claimed = self
            .loaded
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                limit.is_none_or(|(max, _)| n < max).then_some(n + 1)
            });
        match (claimed, limit) {
            (Ok(before), _) => {
                self.peak.fetch_max(before + 1, Ordering::SeqCst);
                Ok(LoadedSlot(self.loaded.clone()))
            }
            (Err(_), None) => Ok(LoadedSlot(self.loaded.clone())),
            (Err(n), Some(_)) => Err(DeviceError::Refused(vec![self.rules.violation(
                |r| matches!(r, Rule::MaxLoadedKernels(_)),
                "this compile".into(),
                format!("a kernel beyond the {n} loaded"),
            )])),
        }
    }
}

/// One loaded kernel's place in the count; given back when the kernel is dropped.
struct LoadedSlot(Arc<AtomicUsize>);

impl Drop for LoadedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<D: Device> Decorator for RuleCheck<D> {
    fn wrapped(&self) -> &dyn Device {
        &self.inner
    }

    fn rules_in_force(&self, _wrapped: Option<ChipRules>) -> Option<ChipRules> {
        Some(self.rules.clone())
    }

    fn around_compile(
        &self,
        program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        let refusals = self.rules.refusals(program)?;
        if !refusals.is_empty() {
            return Err(DeviceError::Refused(refusals));
        }
        let slot = self.claim_slot()?;
        let mut kernel = compile()?;
        kernel.hold(slot);
        Ok(kernel)
    }
}

/// Makes compiles and evals take the time a chip would take. On a [`SimClock`](crate::clock::SimClock)
/// they take exactly that virtual time; on a real clock the decorator sleeps for whatever the
/// wrapped device did not already spend. Every report of a device behind it says "simulated".
pub struct LatencyModel<D> {
    inner: D,
    profile: ChipProfile,
    clock: Arc<dyn Clock>,
    /// Eval cost per compiled kernel, keyed by the kernel's address (set at compile).
    eval_costs: Mutex<HashMap<usize, Duration>>,
}

impl<D: Device> LatencyModel<D> {
    pub fn new(inner: D, profile: ChipProfile, clock: Arc<dyn Clock>) -> Self {
        LatencyModel {
            inner,
            profile,
            clock,
            eval_costs: Mutex::new(HashMap::new()),
        }
    }

    pub fn profile(&self) -> &ChipProfile {
        &self.profile
    }

    fn spend(&self, modelled: Duration, real_start: Instant) {
        if self.clock.is_simulated() {
            self.clock.sleep(modelled);
        } else if let Some(rest) = modelled.checked_sub(real_start.elapsed()) {
            self.clock.sleep(rest);
        }
    }
}

impl<D: Device> Decorator for LatencyModel<D> {
    fn wrapped(&self) -> &dyn Device {
        &self.inner
    }

    fn describe(&self, mut info: DeviceInfo) -> DeviceInfo {
        info.name = format!("{} (latency model: {})", info.name, self.profile.name);
        info.simulated = true;
        info
    }

    fn around_compile(
        &self,
        program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        let start = Instant::now();
        let checked = check_program(program)?;
        let main = program
            .main()
            .ok_or_else(|| DeviceError::CompileFailed("the program has no function".into()))?;
        let flops = cost::flops(main, &checked);
        let values = cost::weight_values(main);
        let kernel = compile();
        self.spend(self.profile.compile_time(values), start);
        let kernel = kernel?;
        self.eval_costs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kernel.id(), self.profile.eval_time(flops));
        Ok(kernel)
    }

    fn around_eval(
        &self,
        kernel: &mut Kernel,
        outputs: &mut [&mut [f32]],
        eval: impl FnOnce(&mut Kernel, &mut [&mut [f32]]) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let start = Instant::now();
        let cost = self
            .eval_costs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&kernel.id())
            .copied()
            .unwrap_or(self.profile.eval_base);
        let result = eval(kernel, outputs);
        self.spend(cost, start);
        result
    }
}

/// Makes chosen compiles and evals fail (1-based counts over the device's lifetime), to test
/// how callers survive failures.
pub struct FaultInjection<D> {
    inner: D,
    failing_compiles: BTreeSet<u64>,
    failing_evals: BTreeSet<u64>,
    compiles: AtomicU64,
    evals: AtomicU64,
}

impl<D: Device> FaultInjection<D> {
    pub fn new(inner: D) -> Self {
        FaultInjection {
            inner,
            failing_compiles: BTreeSet::new(),
            failing_evals: BTreeSet::new(),
            compiles: AtomicU64::new(0),
            evals: AtomicU64::new(0),
        }
    }

    /// Compile number `k` (1-based) fails.
    pub fn fail_compile(mut self, k: u64) -> Self {
        self.failing_compiles.insert(k);
        self
    }

    /// Eval number `k` (1-based) fails.
    pub fn fail_eval(mut self, k: u64) -> Self {
        self.failing_evals.insert(k);
        self
    }

    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::SeqCst)
    }

    pub fn evals(&self) -> u64 {
        self.evals.load(Ordering::SeqCst)
    }
}

impl<D: Device> Decorator for FaultInjection<D> {
    fn wrapped(&self) -> &dyn Device {
        &self.inner
    }

    fn around_compile(
        &self,
        _program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        let k = self.compiles.fetch_add(1, Ordering::SeqCst) + 1;
        if self.failing_compiles.contains(&k) {
            return Err(DeviceError::CompileFailed(format!(
                "injected fault: compile {k} fails"
            )));
        }
        compile()
    }

    fn around_eval(
        &self,
        kernel: &mut Kernel,
        outputs: &mut [&mut [f32]],
        eval: impl FnOnce(&mut Kernel, &mut [&mut [f32]]) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let k = self.evals.fetch_add(1, Ordering::SeqCst) + 1;
        if self.failing_evals.contains(&k) {
            return Err(DeviceError::EvalFailed(format!(
                "injected fault: eval {k} fails"
            )));
        }
        eval(kernel, outputs)
    }
}

/// Devices behind shared pointers are devices too, so decorators can wrap `Arc<dyn Device>`.
impl<D: Device + ?Sized> Device for Arc<D> {
    fn info(&self) -> DeviceInfo {
        (**self).info()
    }

    fn compile_budget(&self) -> Option<BudgetStatus> {
        (**self).compile_budget()
    }

    fn chip_rules(&self) -> Option<ChipRules> {
        (**self).chip_rules()
    }

    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Kernel, DeviceError> {
        (**self).compile(program, weights)
    }

    fn prepare(&self, program: &Program) -> PreparedProgram {
        (**self).prepare(program)
    }

    fn compile_prepared(
        &self,
        prepared: &PreparedProgram,
        weights: &WeightFiles,
    ) -> Result<Kernel, DeviceError> {
        (**self).compile_prepared(prepared, weights)
    }

    fn eval(
        &self,
        kernel: &mut Kernel,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), DeviceError> {
        (**self).eval(kernel, inputs, outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::{CpuDevice, NumericMode};
    use anetrain_mil::blob::BlobFile;
    use anetrain_mil::{examples, DType};

    /// The virtual time a latency-modelled compile of a 48→48→32 conv stack takes, with its
    /// program and weights in `dtype`.
    fn simulated_compile(dtype: DType) -> Duration {
        let channels = [48, 48, 32];
        let program = examples::conv_stack(dtype, &channels, 16);
        let mut weights = WeightFiles::new();
        for (i, pair) in channels.windows(2).enumerate() {
            let w = vec![0.01f32; pair[0] * pair[1]];
            let file = match dtype {
                DType::Fp16 => BlobFile::fp16(&w),
                _ => BlobFile::fp32(&w),
            };
            weights.insert_blob(format!("@model_path/weights/w{i}.bin"), &file);
        }
        let clock = Arc::new(SimClock::new());
        let device = LatencyModel::new(
            CpuDevice::new(NumericMode::Fp32),
            ChipProfile::m4(),
            clock.clone(),
        );
        let start = clock.now();
        device
            .compile(&program, &weights)
            .expect("the stack compiles");
        clock.now() - start
    }

    #[test]
    fn a_chip_holds_no_more_kernels_than_its_rule_allows() {
        use crate::ane::rules::{ChipRule, Severity};
        let two = ChipRule {
            rule: Rule::MaxLoadedKernels(2),
            source: "a test",
            severity: Severity::Refused,
        };
        let device = RuleCheck::new(
            CpuDevice::new(NumericMode::Fp32).with_threads(1),
            ChipRules::new("test chip", &[two]),
        );
        assert_eq!(
            device.chip_rules().and_then(|r| r.max_loaded_kernels()),
            Some((2, "a test"))
        );
        let program = examples::dynamic_matmul(16, 16, 32);
        let files = WeightFiles::new();
        let first = device.compile(&program, &files).unwrap();
        let _second = device.compile(&program, &files).unwrap();
        let third = device.compile(&program, &files);
        let Err(DeviceError::Refused(why)) = third else {
            panic!("a third kernel was loaded");
        };
        let message = why[0].to_string();
        for part in [
            "beyond the 2 loaded",
            "loaded-kernels",
            "at most 2",
            "a test",
        ] {
            assert!(message.contains(part), "{message}");
        }
        drop(first);
        assert_eq!(device.loaded(), 1);
        assert!(device.compile(&program, &files).is_ok(), "a slot was freed");
    }

    /// Prepared or not, every compile takes one of the budget, and none is made past it.
    #[test]
    fn a_budget_counts_compiles_of_prepared_programs() {
        let program = examples::dynamic_matmul(4, 4, 8);
        let weights = WeightFiles::new();
        let device = CompileBudget::new(CpuDevice::new(NumericMode::Fp32), 3);
        let prepared = device.prepare(&program);
        assert_eq!(device.used(), 0, "preparing is not compiling");
        device.compile_prepared(&prepared, &weights).unwrap();
        device.compile(&program, &weights).unwrap();
        device.compile_prepared(&prepared, &weights).unwrap();
        assert_eq!(device.used(), 3);
        let refused = device.compile_prepared(&prepared, &weights);
        assert!(matches!(
            refused,
            Err(DeviceError::BudgetExhausted { used: 3, budget: 3 })
        ));
    }

    /// A chip is charged for the weights it would bake (fp16 on the M4), not for the dtype the
    /// CPU standing in for it runs: an fp32 simulation once charged twice the bytes, and a
    /// Stories110M set far more than the compile time measured on the M4 (docs/benchmarks.md).
    #[test]
    fn a_compile_costs_the_weights_the_chip_bakes_whatever_the_program_dtype() {
        let m4 = ChipProfile::m4();
        let values = (48 * 48 + 48 * 32) as u64;
        // 24.8 ms + 5.7 ms/MB × 2 bytes × 3840 values.
        let expect = m4.compile_time(values);
        assert_eq!(
            expect,
            Duration::from_micros(24_800) + Duration::from_micros(5_700).mul_f64(7680.0 / 1e6)
        );
        assert_eq!(simulated_compile(DType::Fp16), expect);
        assert_eq!(simulated_compile(DType::Fp32), expect);
    }
}

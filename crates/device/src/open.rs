//! One way to open a device from what a user asks for: which device, its numbers, its
//! threads, and the decorators (a simulated chip, a compile budget, injected faults, a
//! timeline). Every command that runs kernels opens its device here, so `--device ane` means
//! the same thing to all of them.

use crate::ane::{self, AneDevice};
use crate::clock::{Clock, RealClock, SimClock};
use crate::decorate::{ChipProfile, CompileBudget, FaultInjection, LatencyModel, RuleCheck};
use crate::trace::{Traced, Tracer};
use crate::{CpuDevice, Device, DeviceError, NumericMode};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use thiserror::Error;

/// The devices there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU device: runs everywhere, in fp32 or in the ANE's fp16.
    #[default]
    Cpu,
    /// The Neural Engine of an Apple Silicon Mac.
    Ane,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 2] = [DeviceKind::Cpu, DeviceKind::Ane];

    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Ane => "ane",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = OpenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| OpenError::UnknownDevice(s.to_string()))
    }
}

/// Why a device could not be opened as specified.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("unknown device `{0}` (expected one of: cpu, ane)")]
    UnknownDevice(String),
    #[error("unknown chip `{0}`: no latency profile (known: {known})", known = ChipProfile::NAMES.join(", "))]
    UnknownChip(String),
    #[error("the ANE computes in fp16 only, not in {0}")]
    AneIsFp16(NumericMode),
    #[error("a simulated chip runs its kernels on the CPU device, not on the {0}")]
    SimulatedNotOnCpu(DeviceKind),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// What to open: a device and the decorators around it.
#[derive(Clone, Default)]
pub struct DeviceSpec {
    pub kind: DeviceKind,
    /// The numbers the kernels compute in; by default fp32 on the CPU and fp16 on the ANE.
    pub precision: Option<NumericMode>,
    /// Threads of the CPU device; by default every core.
    pub threads: Option<usize>,
    /// Charge a chip's compile and eval times on a virtual clock (the CPU device computes).
    pub simulate: Option<String>,
    /// Compiles allowed to this process (the ANE also keeps a budget of its own).
    pub compile_budget: Option<u64>,
    /// Compiles that fail, counted from 1 (to test how failures are survived).
    pub failing_compiles: Vec<u64>,
    /// Evals that fail, counted from 1.
    pub failing_evals: Vec<u64>,
    /// Record every compile and eval on this timeline.
    pub tracer: Option<Tracer>,
}

/// An open device with the clock that times it and the numbers it computes in.
#[derive(Clone)]
pub struct OpenDevice {
    pub device: Arc<dyn Device>,
    /// A virtual clock when a chip is simulated, real time otherwise.
    pub clock: Arc<dyn Clock>,
    pub mode: NumericMode,
}

impl DeviceSpec {
    /// The CPU device in `mode`, undecorated.
    pub fn cpu(mode: NumericMode) -> DeviceSpec {
        DeviceSpec {
            precision: Some(mode),
            ..DeviceSpec::default()
        }
    }

    /// The numbers the device computes in: the ANE's are fp16 and cannot be asked otherwise.
    pub fn mode(&self) -> Result<NumericMode, OpenError> {
        match (self.kind, self.precision) {
            (DeviceKind::Ane, None | Some(NumericMode::Fp16)) => Ok(NumericMode::Fp16),
            (DeviceKind::Ane, Some(other)) => Err(OpenError::AneIsFp16(other)),
            (DeviceKind::Cpu, precision) => Ok(precision.unwrap_or(NumericMode::Fp32)),
        }
    }

    /// The simulated chip's profile, if one is asked for.
    fn chip(&self) -> Result<Option<ChipProfile>, OpenError> {
        let Some(name) = &self.simulate else {
            return Ok(None);
        };
        if self.kind != DeviceKind::Cpu {
            return Err(OpenError::SimulatedNotOnCpu(self.kind));
        }
        ChipProfile::by_name(name)
            .map(Some)
            .ok_or_else(|| OpenError::UnknownChip(name.clone()))
    }

    /// Opens the device and wraps it in the decorators asked for.
    pub fn open(&self) -> Result<OpenDevice, OpenError> {
        // Checked before the device opens, so a bad specification costs no ANE session.
        let (mode, chip) = (self.mode()?, self.chip()?);
        let device: Arc<dyn Device> = match self.kind {
            DeviceKind::Cpu => {
                let cpu = CpuDevice::new(mode);
                Arc::new(match self.threads {
                    Some(threads) => cpu.with_threads(threads),
                    None => cpu,
                })
            }
            DeviceKind::Ane => Arc::new(AneDevice::open()?),
        };
        Ok(self.wrap(device, mode, chip))
    }

    /// Wraps a device already open (one shared by several runs, say) in the decorators asked
    /// for, innermost first: the simulated chip's timings, injected faults, the budget, the
    /// chip's rules, the timeline.
    pub fn decorate(&self, device: Arc<dyn Device>) -> Result<OpenDevice, OpenError> {
        Ok(self.wrap(device, self.mode()?, self.chip()?))
    }

    fn wrap(
        &self,
        device: Arc<dyn Device>,
        mode: NumericMode,
        chip: Option<ChipProfile>,
    ) -> OpenDevice {
        let clock: Arc<dyn Clock> = match chip {
            Some(_) => Arc::new(SimClock::new()),
            None => Arc::new(RealClock::new()),
        };
        let mut device = device;
        let rules = chip.as_ref().map(|p| ane::chip::rules_of(Some(p.chip)));
        if let Some(profile) = chip {
            device = Arc::new(LatencyModel::new(device, profile, clock.clone()));
        }
        if !self.failing_compiles.is_empty() || !self.failing_evals.is_empty() {
            let mut faulty = FaultInjection::new(device);
            for &k in &self.failing_compiles {
                faulty = faulty.fail_compile(k);
            }
            for &k in &self.failing_evals {
                faulty = faulty.fail_eval(k);
            }
            device = Arc::new(faulty);
        }
        if let Some(budget) = self.compile_budget {
            device = Arc::new(CompileBudget::new(device, budget));
        }
        // Outside the budget: a program the chip refuses costs no compile, as on the ANE.
        if let Some(rules) = rules {
            device = Arc::new(RuleCheck::new(device, rules));
        }
        if let Some(tracer) = &self.tracer {
            device = Arc::new(Traced::new(device, tracer.clone(), clock.clone()));
        }
        OpenDevice {
            device,
            clock,
            mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_mil::blob::WeightFiles;
    use anetrain_mil::examples;

    #[test]
    fn device_names_round_trip_and_unknown_ones_are_named() {
        for kind in DeviceKind::ALL {
            assert_eq!(kind.name().parse::<DeviceKind>().unwrap(), kind);
        }
        let err = "gpu".parse::<DeviceKind>().unwrap_err().to_string();
        assert_eq!(err, "unknown device `gpu` (expected one of: cpu, ane)");
    }

    #[test]
    fn the_ane_computes_in_fp16_and_the_cpu_in_fp32_by_default() {
        let ane = |precision| DeviceSpec {
            kind: DeviceKind::Ane,
            precision,
            ..DeviceSpec::default()
        };
        assert_eq!(ane(None).mode().unwrap(), NumericMode::Fp16);
        assert_eq!(
            ane(Some(NumericMode::Fp16)).mode().unwrap(),
            NumericMode::Fp16
        );
        let err = ane(Some(NumericMode::Fp32)).open().err().unwrap();
        assert!(
            matches!(err, OpenError::AneIsFp16(NumericMode::Fp32)),
            "{err}"
        );
        assert_eq!(DeviceSpec::default().mode().unwrap(), NumericMode::Fp32);
        let fp16 = DeviceSpec::cpu(NumericMode::Fp16).open().unwrap();
        assert_eq!(fp16.mode, NumericMode::Fp16);
    }

    /// Off Apple Silicon the ANE is unavailable, and says why; on a Mac it opens.
    #[test]
    fn the_ane_opens_or_says_why_not() {
        let spec = DeviceSpec {
            kind: DeviceKind::Ane,
            ..DeviceSpec::default()
        };
        match spec.open() {
            Ok(open) => assert_eq!(open.device.info().kind, "ane"),
            Err(OpenError::Device(DeviceError::Unavailable(reason))) => {
                if !cfg!(target_vendor = "apple") {
                    assert!(reason.contains("Apple Silicon Mac"), "{reason}");
                }
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn a_simulated_chip_must_be_known_and_runs_on_the_cpu() {
        let unknown = DeviceSpec {
            simulate: Some("m9".into()),
            ..DeviceSpec::default()
        };
        let err = unknown.open().err().unwrap().to_string();
        assert_eq!(
            err,
            "unknown chip `m9`: no latency profile (known: m1, m2, m3, m4, m5)"
        );
        let on_ane = DeviceSpec {
            kind: DeviceKind::Ane,
            simulate: Some("m4".into()),
            ..DeviceSpec::default()
        };
        assert!(matches!(
            on_ane.open().err().unwrap(),
            OpenError::SimulatedNotOnCpu(DeviceKind::Ane)
        ));
    }

    /// Every decorator the specification asks for is in the stack, on the one clock.
    #[test]
    fn the_decorators_asked_for_are_stacked() {
        let tracer = Tracer::new();
        let spec = DeviceSpec {
            threads: Some(1),
            simulate: Some("m4".into()),
            compile_budget: Some(2),
            failing_evals: vec![2],
            tracer: Some(tracer.clone()),
            ..DeviceSpec::default()
        };
        let open = spec.open().unwrap();
        let (device, clock) = (&open.device, &open.clock);
        assert!(clock.is_simulated());
        assert!(device.info().simulated, "the latency model");
        let weights = WeightFiles::new();
        // Widths 12 and 8, which the chip corrupts: refused before anything is spent.
        let start = clock.now();
        let refused = device.compile(&examples::dynamic_matmul(4, 4, 8), &weights);
        assert!(matches!(refused, Err(DeviceError::Refused(_))));
        assert_eq!(clock.now(), start);
        assert_eq!(device.compile_budget().map(|b| b.used), Some(0));
        let program = examples::dynamic_matmul(16, 16, 32);
        let mut kernel = device.compile(&program, &weights).unwrap();
        assert!(clock.now() > start, "compiles take simulated time");
        assert_eq!(device.compile_budget().map(|b| b.used), Some(1));
        let input = vec![0.5; kernel.input_lens()[0]];
        let mut output = vec![0.0; kernel.output_lens()[0]];
        device
            .eval(&mut kernel, &[&input], &mut [&mut output])
            .unwrap();
        let second = device.eval(&mut kernel, &[&input], &mut [&mut output]);
        assert!(matches!(second, Err(DeviceError::EvalFailed(_))));
        device.compile(&program, &weights).unwrap();
        let third = device.compile(&program, &weights);
        assert!(matches!(third, Err(DeviceError::BudgetExhausted { .. })));
        // Every call made it to the timeline: the compile the chip refused, two compiles, two
        // evals, and the compile past the budget (the rules and the budget sit inside the trace).
        assert_eq!(tracer.spans().len(), 6);
    }
}

//! Shared pieces of the probe tests: a device on a latency model in virtual time, a decorator
//! that corrupts results, and the check that every JSON figure carries its unit.
#![allow(dead_code)]

use anetrain_device::clock::{Clock, SimClock};
use anetrain_device::decorate::{ChipProfile, Decorator, LatencyModel};
use anetrain_device::{CpuDevice, Device, DeviceError, Kernel, NumericMode};
use anetrain_mil::Program;
use anetrain_probe::{ProbeConfig, Testbed};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The CPU device behind the M4 latency model: one thread, since tests run side by side.
pub fn simulated_m4(clock: Arc<dyn Clock>) -> LatencyModel<CpuDevice> {
    let cpu = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    LatencyModel::new(cpu, ChipProfile::m4(), clock)
}

pub fn sim_clock() -> Arc<dyn Clock> {
    Arc::new(SimClock::new())
}

/// A testbed around `wrap(simulated M4)`, all on one virtual clock.
pub fn simulated_testbed<D: Device + 'static>(
    wrap: impl FnOnce(LatencyModel<CpuDevice>) -> D,
) -> Testbed {
    let clock = sim_clock();
    let device = wrap(simulated_m4(clock.clone()));
    Testbed::new(Arc::new(device), clock)
}

/// Small sizes for the failure tests. Compile numbers (1-based) in a run: 1 = test 1's
/// kernel, 2 = test 2's second kernel, 3..=6 = test 3, 7 = test 4's background compile,
/// 8.. = the loaded-at-once count.
pub fn small_config() -> ProbeConfig {
    ProbeConfig {
        channels: 16,
        spatial: 8,
        warmup_evals: 3,
        evals: 50,
        pairs: 20,
        compiles: 4,
        max_loaded: 8,
        ..ProbeConfig::default()
    }
}

/// Which evals [`CorruptEval`] spoils.
#[derive(Clone, Copy, Debug)]
pub enum Spoil {
    /// Eval number `k` (1-based) over the device's lifetime.
    Eval(u64),
    /// Every eval of the kernel that compile number `k` (1-based) produced.
    KernelOfCompile(u64),
}

/// Returns wrong results (the first output element plus one), the way a miscompiled kernel
/// would.
pub struct CorruptEval<D> {
    inner: D,
    spoil: Spoil,
    evals: AtomicU64,
    compiles: AtomicU64,
    /// Kernel ids start at 1; 0 means "not compiled yet".
    spoiled_kernel: AtomicUsize,
}

impl<D> CorruptEval<D> {
    pub fn new(inner: D, spoil: Spoil) -> Self {
        CorruptEval {
            inner,
            spoil,
            evals: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
            spoiled_kernel: AtomicUsize::new(0),
        }
    }
}

impl<D: Device> Decorator for CorruptEval<D> {
    fn wrapped(&self) -> &dyn Device {
        &self.inner
    }

    fn around_compile(
        &self,
        _program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        let k = self.compiles.fetch_add(1, Ordering::SeqCst) + 1;
        let kernel = compile()?;
        if matches!(self.spoil, Spoil::KernelOfCompile(n) if n == k) {
            self.spoiled_kernel.store(kernel.id(), Ordering::SeqCst);
        }
        Ok(kernel)
    }

    fn around_eval(
        &self,
        kernel: &mut Kernel,
        outputs: &mut [&mut [f32]],
        eval: impl FnOnce(&mut Kernel, &mut [&mut [f32]]) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        eval(kernel, outputs)?;
        let k = self.evals.fetch_add(1, Ordering::SeqCst) + 1;
        let spoiled = match self.spoil {
            Spoil::Eval(n) => n == k,
            Spoil::KernelOfCompile(_) => self.spoiled_kernel.load(Ordering::SeqCst) == kernel.id(),
        };
        if spoiled {
            outputs[0][0] += 1.0;
        }
        Ok(())
    }
}

/// Every number in `json` is the `value` of an object whose `unit` is a non-empty string.
pub fn assert_every_number_has_a_unit(json: &Value) {
    fn walk(v: &Value, path: &str) {
        match v {
            Value::Number(_) => panic!("{path}: a number without a unit"),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"));
                }
            }
            Value::Object(map) => {
                if let Some(value) = map.get("value") {
                    let unit = map.get("unit").and_then(Value::as_str).unwrap_or("");
                    assert!(!unit.is_empty(), "{path}: value without a unit");
                    assert!(
                        value.is_number() || value.is_null(),
                        "{path}: value is {value}"
                    );
                    assert_eq!(map.len(), 2, "{path}: a figure has only value and unit");
                    return;
                }
                for (k, item) in map {
                    walk(item, &format!("{path}.{k}"));
                }
            }
            _ => {}
        }
    }
    walk(json, "$");
}

/// `json[a][b]…["value"]` as f64.
pub fn figure(json: &Value, path: &[&str]) -> f64 {
    let mut v = json;
    for key in path {
        v = &v[*key];
    }
    v["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} has no numeric value: {v}"))
}

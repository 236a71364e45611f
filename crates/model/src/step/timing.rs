//! Where a step's time goes: device evals on the run's clock, host work in real time.

use crate::kernels::KernelKind;
use anetrain_device::clock::Clock;
use std::time::{Duration, Instant};

/// Where a step's time went. Device evals are timed on the clock (virtual under a latency
/// model); host work is timed in real time, since it really runs.
#[derive(Clone)]
pub struct StepTiming<'c> {
    pub clock: &'c dyn Clock,
    pub device_eval: Duration,
    /// `device_eval` split by kernel, indexed like [`KernelKind::ALL`].
    pub eval_by_kernel: [Duration; KernelKind::ALL.len()],
    pub host_math: Duration,
    /// Weight-gradient products, on a helper thread alongside the step's evals.
    pub weight_grads: Duration,
    /// How long the step waited for them at its end.
    pub weight_grad_wait: Duration,
    /// The larger pieces of host work, on the clock, for the timeline (the residual adds
    /// between kernels are counted in `host_math` but not kept).
    pub host_spans: Vec<HostSpan>,
}

/// A piece of a step's host work on the run's clock. On a virtual clock it has no length:
/// host time is added there after the step's evals.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpan {
    pub name: &'static str,
    pub start: Duration,
    pub end: Duration,
}

/// Host work being timed (from [`StepTiming::host_start`]).
pub struct HostTimer {
    wall: Instant,
    on_clock: Duration,
}

impl<'c> StepTiming<'c> {
    pub fn new(clock: &'c dyn Clock) -> StepTiming<'c> {
        StepTiming {
            clock,
            device_eval: Duration::ZERO,
            eval_by_kernel: [Duration::ZERO; KernelKind::ALL.len()],
            host_math: Duration::ZERO,
            weight_grads: Duration::ZERO,
            weight_grad_wait: Duration::ZERO,
            host_spans: Vec::new(),
        }
    }

    pub fn add(&mut self, other: &StepTiming) {
        self.device_eval += other.device_eval;
        for (mine, theirs) in self.eval_by_kernel.iter_mut().zip(&other.eval_by_kernel) {
            *mine += *theirs;
        }
        self.host_math += other.host_math;
        self.weight_grads += other.weight_grads;
        self.weight_grad_wait += other.weight_grad_wait;
        self.host_spans.extend_from_slice(&other.host_spans);
    }

    pub fn host_start(&self) -> HostTimer {
        HostTimer {
            wall: Instant::now(),
            on_clock: self.clock.now(),
        }
    }

    /// Ends host math begun at `t`: counted in `host_math`, and kept as a span when named.
    pub fn host_end(&mut self, t: HostTimer, span: Option<&'static str>) {
        self.host_math += t.wall.elapsed();
        if let Some(name) = span {
            self.span(name, t.on_clock);
        }
    }

    pub(super) fn span(&mut self, name: &'static str, start: Duration) {
        self.host_spans.push(HostSpan {
            name,
            start,
            end: self.clock.now(),
        });
    }
}

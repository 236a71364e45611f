//! Training benchmarks, measured side by side in one process: [`train::TrainBench`] (where a
//! step's time goes, against the machine's FMA peak) and [`weights::WeightsBench`] (the
//! weight-delivery strategies against frozen kernels). Each returns a report whose `Display`
//! is the table users read.

pub mod train;
pub mod weights;

use crate::delivery::Strategy;
use crate::run::RunError;
use crate::trainer::{
    train, Counters, DeliverySettings, Event, StepRecord, TrainOptions, TrainSetup, TrainState,
    ValidationSource, WindowSource,
};
use anetrain_device::clock::Clock;
use anetrain_device::Device;
use anetrain_model::init::init_params;
use anetrain_model::{ModelConfig, ParamLayout};
use std::sync::Arc;
use std::time::Duration;

/// Deterministic pseudo-random tokens, for throughput measurements of models whose vocabulary
/// has no tokenizer here.
pub(crate) struct SyntheticWindows {
    pub(crate) vocab: u64,
    pub(crate) state: u64,
}

impl SyntheticWindows {
    fn next(&mut self) -> u64 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.state >> 33) % self.vocab
    }
}

impl WindowSource for SyntheticWindows {
    fn next_train_window(&mut self, out: &mut [u32]) {
        for t in out.iter_mut() {
            *t = self.next() as u32;
        }
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "rng": self.state.to_string() })
    }
}

impl ValidationSource for SyntheticWindows {
    fn validation_window(&self, i: usize, out: &mut [u32]) {
        for (j, t) in out.iter_mut().enumerate() {
            *t = ((i * 7919 + j * 104729) as u64 % self.vocab) as u32;
        }
    }
    fn validation_window_count(&self) -> usize {
        4
    }
}

/// What one measured run did.
pub(crate) struct Summary {
    counters: Counters,
    wall: Duration,
    final_train_loss: f32,
    /// At the end of the run (none when the run has no validation).
    val_loss: Option<f32>,
    mean_lag: f64,
    max_lag: u64,
    steps: Vec<StepRecord>,
}

pub(crate) fn measured_run(
    config: &ModelConfig,
    options: &TrainOptions,
    strategy: Strategy,
    max_staleness: u64,
    device: &dyn Device,
    clock: &dyn Clock,
    data: &mut dyn WindowSource,
) -> Result<Summary, RunError> {
    let layout = Arc::new(ParamLayout::new(config));
    let mut state = TrainState::new(
        init_params(layout, options.seed),
        options,
        device.info().numeric,
    );
    let env = TrainSetup {
        device,
        clock,
        delivery: DeliverySettings {
            max_staleness,
            ..DeliverySettings::new(strategy)
        },
        simulate_host_time: true,
        stop_after: None,
        halt: None,
    };
    let mut steps = Vec::new();
    let mut val = None;
    train(&env, options, &mut state, data, None, &mut |e| match e {
        Event::Step(r) => steps.push(r.clone()),
        Event::Validation { loss, .. } => val = Some(*loss),
        _ => {}
    })?;
    let tail = &steps[steps.len().saturating_sub(20)..];
    let lags = || steps.iter().map(|r| r.staleness);
    Ok(Summary {
        wall: state.counters.wall,
        final_train_loss: tail.iter().map(|r| r.loss).sum::<f32>() / tail.len().max(1) as f32,
        val_loss: val,
        mean_lag: lags().sum::<u64>() as f64 / steps.len().max(1) as f64,
        max_lag: lags().max().unwrap_or(0),
        counters: state.counters,
        steps,
    })
}

/// The index of the median of `values` (the upper one of an even count).
pub(crate) fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[order.len() / 2]
}

/// Peak resident memory of this process so far (Linux), in bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

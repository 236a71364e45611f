//! What the delivery and restart tests share: a latency profile with round numbers (and a CPU
//! device behind it) and a data
//! source whose windows are a fixed function of a counter. Each test crate uses part of it.
#![allow(dead_code)]

use anetrain_device::clock::SimClock;
use anetrain_device::decorate::{ChipProfile, LatencyModel};
use anetrain_device::{CpuDevice, NumericMode};
use anetrain_train::trainer::{ValidationSource, WindowSource};
use std::sync::Arc;
use std::time::Duration;

/// Every kernel compiles in exactly 10 ms and evaluates in exactly 1 ms of virtual time.
pub fn profile() -> ChipProfile {
    ChipProfile {
        name: "test",
        chip: ChipProfile::m4().chip,
        compile_base: Duration::from_millis(10),
        compile_per_mb: Duration::ZERO,
        bytes_per_weight: 2,
        eval_base: Duration::from_millis(1),
        eval_flops: f64::INFINITY,
    }
}

/// A one-thread CPU device in `mode` behind [`profile`], on `clock`.
pub fn simulated(clock: &Arc<SimClock>, mode: NumericMode) -> LatencyModel<CpuDevice> {
    LatencyModel::new(
        CpuDevice::new(mode).with_threads(1),
        profile(),
        clock.clone(),
    )
}

/// Training window n is token (n + 7i) mod 23 at position i; the one validation window is
/// (5j) mod 23. The counter is the sampler state a checkpoint keeps.
pub struct Cycle(pub u32);

impl WindowSource for Cycle {
    fn next_train_window(&mut self, out: &mut [u32]) {
        for (i, t) in out.iter_mut().enumerate() {
            *t = (self.0 + i as u32 * 7) % 23;
        }
        self.0 += 1;
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!(self.0)
    }
}

impl ValidationSource for Cycle {
    fn validation_window(&self, i: usize, out: &mut [u32]) {
        for (j, t) in out.iter_mut().enumerate() {
            *t = (i as u32 + j as u32 * 5) % 23;
        }
    }
    fn validation_window_count(&self) -> usize {
        1
    }
}

/// A checkpoint checkpoints into `dir`, with a stand-in tokenizer.
pub fn checkpoint_folder(dir: &std::path::Path) -> anetrain_train::trainer::CheckpointFolder {
    anetrain_train::trainer::CheckpointFolder {
        dir: dir.to_path_buf(),
        tokenizer_kind: anetrain_train::tokenizer::TokenizerKind::HuggingFace,
        tokenizer: b"{}".to_vec(),
        tokenizer_config: None,
        base_model: None,
        run: Default::default(),
    }
}

/// Options for a short run of `steps` updates on one thread, with no validation or
/// checkpoint on a schedule.
pub fn short_run(steps: u64) -> anetrain_train::trainer::TrainOptions {
    anetrain_train::trainer::TrainOptions {
        steps,
        eval_every: 0,
        checkpoint_every: 0,
        threads: 1,
        ..Default::default()
    }
}

/// A run environment for tests: staleness bound 1, 3 failures in a row allowed, no stop
/// before the schedule ends, and host work free on a virtual clock (so that its timeline is
/// exact).
pub fn test_env<'a>(
    device: &'a dyn anetrain_device::Device,
    clock: &'a dyn anetrain_device::clock::Clock,
    strategy: anetrain_train::delivery::Strategy,
) -> anetrain_train::trainer::TrainSetup<'a> {
    anetrain_train::trainer::TrainSetup {
        device,
        clock,
        delivery: anetrain_train::trainer::DeliverySettings::new(strategy),
        simulate_host_time: false,
        stop_after: None,
        halt: None,
    }
}

//! The efficiency report of a run: where its wall time went, at what throughput, with how many
//! compiles and how stale the device's weights ran. Its `Display` is the text users see.

use crate::delivery::Strategy;
use crate::trainer::{Counters, TrainOptions, TrainState};
use anetrain_device::cpu::best_fma_peak;
use anetrain_device::{BudgetStatus, Device, NumericMode};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Every figure of the report, computed once from a run's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct EfficiencyReport {
    pub device: String,
    pub mode: NumericMode,
    /// Whether the device's times are modelled (a latency model on a virtual clock).
    pub simulated: bool,
    pub strategy: Strategy,
    pub steps: u64,
    pub counters: Counters,
    /// The compile stall after the start-up compiles, and its share in percent of the wall
    /// time after them.
    pub stall_after_startup: (Duration, f64),
    pub ms_per_step: f64,
    pub train_ms_per_step: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs per second of device eval time.
    pub device_tflops: f64,
    /// Model FLOPs (3× the forward matmuls) per second of train time.
    pub total_tflops: f64,
    /// The machine's FP32 peak, measured by an FMA loop, on a real CPU device only.
    pub fma_peak_flops: Option<f64>,
    pub budget: Option<BudgetStatus>,
    /// The most memory the process held resident, in bytes (of the last process, after a
    /// budget restart).
    pub peak_resident_bytes: Option<u64>,
}

impl EfficiencyReport {
    /// The report of a run that ended in `state`; on a real CPU device it measures the FMA
    /// peak to compare with (about a third of a second).
    pub fn new(
        state: &TrainState,
        options: &TrainOptions,
        device: &dyn Device,
        mode: NumericMode,
        strategy: Strategy,
    ) -> EfficiencyReport {
        let info = device.info();
        let fma_peak_flops = (info.kind == "cpu" && !info.simulated)
            .then(|| best_fma_peak(options.threads, 3, Duration::from_millis(100)));
        EfficiencyReport {
            peak_resident_bytes: anetrain_device::memory::peak_resident(),
            ..EfficiencyReport::with_peak(state, options, device, mode, strategy, fma_peak_flops)
        }
    }

    /// The report with a given FMA peak (or none).
    pub fn with_peak(
        state: &TrainState,
        options: &TrainOptions,
        device: &dyn Device,
        mode: NumericMode,
        strategy: Strategy,
        fma_peak_flops: Option<f64>,
    ) -> EfficiencyReport {
        let c = &state.counters;
        let info = device.info();
        let steps = state.step.max(1) as f64;
        let wall = c.wall.as_secs_f64().max(1e-9);
        let train = c.train.as_secs_f64().max(1e-9);
        let windows = steps * options.accum.max(1) as f64;
        let total_flops = state.config.train_flops_per_window() * windows;
        let device_flops = state.config.device_flops_per_window() * windows;
        EfficiencyReport {
            device: info.name,
            mode,
            simulated: info.simulated,
            strategy,
            steps: state.step,
            counters: c.clone(),
            stall_after_startup: c.stall_after_startup(),
            ms_per_step: 1e3 * c.wall.as_secs_f64() / steps,
            train_ms_per_step: 1e3 * train / steps,
            tokens_per_s: c.tokens as f64 / wall,
            device_tflops: device_flops / c.device_eval.as_secs_f64().max(1e-9) / 1e12,
            total_tflops: total_flops / train / 1e12,
            fma_peak_flops,
            budget: device.compile_budget(),
            peak_resident_bytes: None,
        }
    }

    /// Share of the wall time, in percent.
    fn share(&self, part: Duration) -> f64 {
        100.0 * part.as_secs_f64() / self.counters.wall.as_secs_f64().max(1e-9)
    }

    /// The model FLOP utilisation against the FMA peak, in percent.
    pub fn mfu(&self) -> Option<f64> {
        self.fma_peak_flops
            .map(|peak| 100.0 * self.total_tflops * 1e12 / peak)
    }

    /// Steps by how many updates the device weights lagged.
    pub fn staleness(&self) -> &BTreeMap<u64, u64> {
        &self.counters.staleness
    }

    /// The report's figures as `report.json` holds them, each key naming its unit.
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let s = |d: Duration| d.as_secs_f64();
        let (later, later_share) = self.stall_after_startup;
        let lags: serde_json::Map<String, serde_json::Value> = self
            .staleness()
            .iter()
            .map(|(lag, n)| (lag.to_string(), (*n).into()))
            .collect();
        serde_json::json!({
            "device": self.device,
            "precision": self.mode.name(),
            "simulated": self.simulated,
            "weights": self.strategy.name(),
            "steps": self.steps,
            "wall_s": s(c.wall),
            "compile_stall_s": s(c.compile_stall),
            "startup_compile_s": s(c.startup_compile),
            "stall_after_startup_s": s(later),
            "stall_after_startup_percent": later_share,
            "background_compile_s": s(c.background_compile),
            "background_compile_cpu_s": s(c.background_compile_cpu),
            "train_s": s(c.train),
            "device_eval_s": s(c.device_eval),
            "host_math_s": s(c.host_math),
            "weight_grads_s": s(c.weight_grads),
            "weight_grad_wait_s": s(c.weight_grad_wait),
            "optimizer_s": s(c.optimizer),
            "staging_s": s(c.staging),
            "ms_per_step": self.ms_per_step,
            "train_ms_per_step": self.train_ms_per_step,
            "tokens_per_s": self.tokens_per_s,
            "device_tflops": self.device_tflops,
            "total_tflops": self.total_tflops,
            "fma_peak_gflops": self.fma_peak_flops.map(|f| f / 1e9),
            "mfu_percent": self.mfu(),
            "compiles": c.compiles,
            "compile_budget": self.budget.map(|b| b.budget),
            "compile_budget_used": self.budget.map(|b| b.used),
            "swaps": c.swaps,
            "group_swaps": c.group_swaps,
            "failed_compiles": c.failed_compiles,
            "skipped_updates": c.skipped_updates,
            "staleness": lags,
            "peak_resident_bytes": self.peak_resident_bytes,
        })
    }
}

impl fmt::Display for EfficiencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        let s = |d: Duration| d.as_secs_f64();
        let sim = if self.simulated { " [simulated]" } else { "" };
        writeln!(f, "=== Efficiency report{sim} ===")?;
        writeln!(
            f,
            "device              {} ({}){sim}",
            self.device, self.mode
        )?;
        writeln!(f, "weight delivery     {}", self.strategy.name())?;
        writeln!(f, "steps               {}", self.steps)?;
        writeln!(f, "wall time           {:.2} s", s(c.wall))?;
        writeln!(
            f,
            "compile stall       {:.2} s ({:.1} % of wall)",
            s(c.compile_stall),
            self.share(c.compile_stall)
        )?;
        writeln!(
            f,
            "  at start-up       {:.2} s (the first sets of each process; nothing to evaluate yet)",
            s(c.startup_compile)
        )?;
        let (later, later_share) = self.stall_after_startup;
        writeln!(
            f,
            "  after start-up    {:.2} s ({:.2} % of the wall time after start-up)",
            s(later),
            later_share
        )?;
        // The CPU time is this host's whichever the clock: a latency model only adds time.
        let compile_cpu = if c.background_compile_cpu > Duration::ZERO {
            format!(
                " (CPU time {:.2} s on this host)",
                s(c.background_compile_cpu)
            )
        } else {
            String::new()
        };
        writeln!(
            f,
            "background compile  {:.2} s{compile_cpu}",
            s(c.background_compile)
        )?;
        writeln!(
            f,
            "train time          {:.2} s ({:.1} % of wall)",
            s(c.train).max(1e-9),
            self.share(c.train)
        )?;
        writeln!(f, "  device eval       {:.2} s", s(c.device_eval))?;
        writeln!(f, "  host math         {:.2} s", s(c.host_math))?;
        writeln!(
            f,
            "  weight gradients  {:.2} s (alongside the evals; the steps waited {:.2} s for them)",
            s(c.weight_grads),
            s(c.weight_grad_wait)
        )?;
        writeln!(f, "optimizer           {:.2} s", s(c.optimizer))?;
        if c.staging > Duration::ZERO {
            writeln!(
                f,
                "weight staging      {:.2} s (dynamic: weights copied into kernel inputs)",
                s(c.staging)
            )?;
        }
        writeln!(
            f,
            "ms/step             {:.1} (train only {:.1})",
            self.ms_per_step, self.train_ms_per_step
        )?;
        writeln!(f, "tokens/s            {:.0}", self.tokens_per_s)?;
        if let Some(bytes) = self.peak_resident_bytes {
            writeln!(
                f,
                "peak memory         {:.2} GB resident (this process)",
                bytes as f64 / 1e9
            )?;
        }
        writeln!(f, "device eval         {:.3} TFLOPS", self.device_tflops)?;
        writeln!(
            f,
            "total               {:.3} TFLOPS in train time (model FLOPs: 3× forward matmuls)",
            self.total_tflops
        )?;
        if let (Some(mfu), Some(peak)) = (self.mfu(), self.fma_peak_flops) {
            writeln!(
                f,
                "MFU                 {mfu:.1} % of the measured FP32 peak ({:.0} GFLOPS, FMA loop)",
                peak / 1e9
            )?;
        }
        let budget = self.budget.map_or("no limit".to_string(), |b| {
            format!("{} of {} in this process", b.used, b.budget)
        });
        writeln!(
            f,
            "compiles            {} in the run; budget: {budget}",
            c.compiles
        )?;
        let groups = match c.layers_per_group {
            Some(g) => format!(" ({} of groups of {g} layers)", c.group_swaps),
            None => String::new(),
        };
        writeln!(
            f,
            "swaps               {}{groups}   failed compiles {}",
            c.swaps, c.failed_compiles
        )?;
        let lags: Vec<String> = self
            .staleness()
            .iter()
            .map(|(lag, n)| format!("{lag}:{n}"))
            .collect();
        writeln!(f, "staleness (lag:steps) {}", lags.join("  "))?;
        if c.skipped_updates > 0 {
            writeln!(
                f,
                "skipped updates     {} (fp16 overflow)",
                c.skipped_updates
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_device::clock::{Clock, SimClock};
    use anetrain_device::decorate::{ChipProfile, CompileBudget, LatencyModel};
    use anetrain_device::CpuDevice;
    use anetrain_model::init::init_params;
    use anetrain_model::{ModelConfig, ParamLayout};
    use std::sync::Arc;

    /// Every figure of the report, from counters with round numbers: 100 steps of 2 windows
    /// in 10 s, of which 2 s waiting for compiles (0.5 s at start-up).
    #[test]
    fn the_report_carries_every_figure_from_the_counters() {
        let config = ModelConfig::tiny();
        let options = TrainOptions {
            accum: 2,
            ..TrainOptions::default()
        };
        let mut state = TrainState::new(
            init_params(Arc::new(ParamLayout::new(&config)), 1),
            &options,
            NumericMode::Fp32,
        );
        state.step = 100;
        let s = Duration::from_secs_f64;
        let c = &mut state.counters;
        c.wall = s(10.0);
        c.compile_stall = s(2.0);
        c.startup_compile = s(0.5);
        c.background_compile = s(3.25);
        c.train = s(7.5);
        c.device_eval = s(4.0);
        c.host_math = s(2.0);
        c.optimizer = s(0.25);
        c.compiles = 42;
        c.swaps = 37;
        c.failed_compiles = 2;
        c.tokens = 100 * 2 * config.seq_len as u64;
        c.staleness = [(0, 60), (1, 40)].into_iter().collect();
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
        let device = CompileBudget::new(
            LatencyModel::new(
                CpuDevice::new(NumericMode::Fp32),
                ChipProfile::by_name("m4").unwrap(),
                clock,
            ),
            100,
        );
        let report = EfficiencyReport::new(
            &state,
            &options,
            &device,
            NumericMode::Fp32,
            Strategy::DoubleBuffer,
        );
        let windows = 200.0;
        assert!(report.simulated);
        assert_eq!(report.strategy, Strategy::DoubleBuffer);
        assert_eq!(report.steps, 100);
        // 1.5 s of the 9.5 s after start-up.
        assert_eq!(report.stall_after_startup.0, s(1.5));
        assert!((report.stall_after_startup.1 - 100.0 * 1.5 / 9.5).abs() < 1e-9);
        assert!((report.share(report.counters.compile_stall) - 20.0).abs() < 1e-9);
        assert!((report.share(report.counters.train) - 75.0).abs() < 1e-9);
        assert!((report.ms_per_step - 100.0).abs() < 1e-9);
        assert!((report.train_ms_per_step - 75.0).abs() < 1e-9);
        assert!((report.tokens_per_s - (100 * 2 * config.seq_len / 10) as f64).abs() < 1e-9);
        let device_tflops = config.device_flops_per_window() * windows / 4.0 / 1e12;
        let total_tflops = config.train_flops_per_window() * windows / 7.5 / 1e12;
        assert!((report.device_tflops - device_tflops).abs() < 1e-12);
        assert!((report.total_tflops - total_tflops).abs() < 1e-12);
        assert_eq!(
            report.fma_peak_flops, None,
            "no peak for a simulated device"
        );
        assert_eq!(
            report.budget,
            Some(BudgetStatus {
                used: 0,
                budget: 100
            })
        );
        assert_eq!(report.staleness(), &state.counters.staleness);

        // The JSON carries the same figures, under names with their units.
        let json = report.to_json();
        assert_eq!(json["weights"], "double-buffer");
        assert_eq!(json["precision"], "fp32");
        assert_eq!(json["simulated"], true);
        assert_eq!(json["steps"], 100);
        assert_eq!(json["wall_s"], 10.0);
        assert_eq!(json["compile_stall_s"], 2.0);
        assert_eq!(json["startup_compile_s"], 0.5);
        assert_eq!(json["stall_after_startup_s"], 1.5);
        assert_eq!(json["ms_per_step"], report.ms_per_step);
        assert_eq!(json["device_tflops"], device_tflops);
        assert_eq!(
            (json["compiles"].as_u64(), json["swaps"].as_u64()),
            (Some(42), Some(37))
        );
        assert_eq!(json["failed_compiles"], 2);
        assert_eq!(json["compile_budget"], 100);
        assert_eq!(json["compile_budget_used"], 0);
        assert_eq!(json["mfu_percent"], serde_json::Value::Null);
        assert_eq!(json["staleness"], serde_json::json!({ "0": 60, "1": 40 }));

        // The text shows each figure as users read it.
        let text = report.to_string();
        for expected in [
            "=== Efficiency report [simulated] ===".to_string(),
            "weight delivery     double-buffer".into(),
            "wall time           10.00 s".into(),
            "compile stall       2.00 s (20.0 % of wall)".into(),
            "  at start-up       0.50 s".into(),
            "  after start-up    1.50 s (15.79 % of the wall time after start-up)".into(),
            "background compile  3.25 s".into(),
            "train time          7.50 s (75.0 % of wall)".into(),
            "ms/step             100.0 (train only 75.0)".into(),
            format!("tokens/s            {}", 100 * 2 * config.seq_len / 10),
            format!("device eval         {device_tflops:.3} TFLOPS"),
            format!("total               {total_tflops:.3} TFLOPS"),
            "compiles            42 in the run; budget: 0 of 100 in this process".into(),
            "swaps               37   failed compiles 2".into(),
            "staleness (lag:steps) 0:60  1:40".into(),
        ] {
            assert!(text.contains(&expected), "no `{expected}` in\n{text}");
        }
        assert!(
            text.contains("[simulated]\n"),
            "the device line is labelled"
        );
        assert!(!text.contains("MFU"), "no MFU without a measured peak");
    }

    /// MFU is the model FLOPs per second of train time over the measured peak.
    #[test]
    fn mfu_compares_train_throughput_with_the_peak() {
        let config = ModelConfig::tiny();
        let options = TrainOptions::default();
        let mut state = TrainState::new(
            init_params(Arc::new(ParamLayout::new(&config)), 1),
            &options,
            NumericMode::Fp32,
        );
        state.step = 10;
        state.counters.train = Duration::from_secs(2);
        state.counters.wall = Duration::from_secs(2);
        let device = CpuDevice::new(NumericMode::Fp32);
        let peak = 100e9;
        let report = EfficiencyReport::with_peak(
            &state,
            &options,
            &device,
            NumericMode::Fp32,
            Strategy::Recompile,
            Some(peak),
        );
        let flops_per_s = config.train_flops_per_window() * 10.0 / 2.0;
        let mfu = report.mfu().unwrap();
        assert!((mfu - 100.0 * flops_per_s / peak).abs() < 1e-9, "{mfu}");
        assert!(report.to_string().contains(&format!(
            "MFU                 {mfu:.1} % of the measured FP32 peak (100 GFLOPS"
        )));
    }
}

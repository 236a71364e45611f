//! `anetrain probe`: what compile and eval cost on a device, and whether they overlap. Also
//! home of the device options `probe` and `peak` share.

use anetrain_device::DeviceSpec;
use anetrain_probe::report::{probe_table, probe_to_json, write_json_atomic};
use anetrain_probe::{run_probe, ProbeConfig, Testbed};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};

/// Which device to measure, and how.
#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// The device: cpu, or ane (Apple Silicon Macs).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Instead of measuring, run against a latency model of this chip (m4) on a virtual
    /// clock; the work itself runs on the CPU device and every figure is labelled simulated.
    #[arg(long, value_name = "CHIP")]
    simulate: Option<String>,
    /// Make compile number K (1-based) fail, to test failure handling.
    #[arg(long, value_name = "K", hide = true)]
    fail_compile: Option<u64>,
    /// Make eval number K (1-based) fail, to test failure handling.
    #[arg(long, value_name = "K", hide = true)]
    fail_eval: Option<u64>,
}

impl DeviceArgs {
    /// The device under test and the clock that times it.
    pub fn testbed(&self) -> anyhow::Result<Testbed> {
        let spec = DeviceSpec {
            kind: self.device.parse()?,
            simulate: self.simulate.clone(),
            failing_compiles: self.fail_compile.into_iter().collect(),
            failing_evals: self.fail_eval.into_iter().collect(),
            ..DeviceSpec::default()
        };
        let open = super::devices::open(&spec)?;
        Ok(Testbed::new(open.device, open.clock))
    }
}

/// Writes a report's JSON atomically, naming the file on failure.
pub fn write_report(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    write_json_atomic(path, value).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("figures written to {}", path.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Also write every figure, with its unit, to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Untimed evals of each kernel before it is timed.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Timed evals in test 1 (pure eval throughput).
    #[arg(long, default_value_t = 1000)]
    evals: usize,
    /// Timed pairs in test 2 (ping-pong).
    #[arg(long, default_value_t = 500)]
    pairs: usize,
    /// Kernels compiled in test 3 (sequential compile).
    #[arg(long, default_value_t = 20)]
    compiles: usize,
    /// The most kernels the loaded-at-once count tries to hold.
    #[arg(long, default_value_t = 64)]
    max_loaded: usize,
    /// Channels of the probe kernel (the original's 128; smaller for quick checks).
    #[arg(long, default_value_t = 128, hide = true)]
    channels: usize,
    /// Spatial size of the probe kernel (the original's 64).
    #[arg(long, default_value_t = 64, hide = true)]
    spatial: usize,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let bed = args.device.testbed()?;
    let config = ProbeConfig {
        channels: args.channels,
        spatial: args.spatial,
        warmup_evals: args.warmup,
        evals: args.evals,
        pairs: args.pairs,
        compiles: args.compiles,
        max_loaded: args.max_loaded,
        ..ProbeConfig::default()
    };
    let report = run_probe(&bed, &config).context("probe failed")?;
    print!("{}", probe_table(&report));
    if let Some(path) = &args.json {
        write_report(path, &probe_to_json(&report))?;
    }
    Ok(())
}

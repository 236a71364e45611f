//! `anetrain probe`: what compile and eval cost on a device, and whether they overlap. Also
//! home of the device options `probe` and `peak` share.

use anetrain_device::clock::{Clock, RealClock, SimClock};
use anetrain_device::decorate::{ChipProfile, FaultInjection, LatencyModel};
use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_probe::report::{probe_table, probe_to_json, write_json_atomic};
use anetrain_probe::{run_probe, ProbeConfig, Testbed};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which device to measure, and how.
#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// The device: cpu (ane where the ANE device is available).
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
        let (device, clock): (Arc<dyn Device>, Arc<dyn Clock>) = match &self.simulate {
            None => (open_device(&self.device)?, Arc::new(RealClock::new())),
            Some(chip) => {
                if self.device != "cpu" {
                    bail!(
                        "--simulate runs the latency model on the CPU device; drop --device {}",
                        self.device
                    );
                }
                let profile = ChipProfile::by_name(chip)
                    .ok_or_else(|| anyhow!("--simulate {chip}: unknown chip (known: m4)"))?;
                let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
                let cpu = CpuDevice::new(NumericMode::Fp32);
                let model = LatencyModel::new(cpu, profile, clock.clone());
                (Arc::new(model), clock)
            }
        };
        let device = match (self.fail_compile, self.fail_eval) {
            (None, None) => device,
            (compile, eval) => {
                let mut faulty = FaultInjection::new(device);
                if let Some(k) = compile {
                    faulty = faulty.fail_compile(k);
                }
                if let Some(k) = eval {
                    faulty = faulty.fail_eval(k);
                }
                Arc::new(faulty)
            }
        };
        Ok(Testbed::new(device, clock))
    }
}

/// Opens the device named on the command line. The CPU device runs in fp32.
// To be replaced by the shared `--device cpu|ane` helper once it lands.
pub fn open_device(name: &str) -> anyhow::Result<Arc<dyn Device>> {
    match name {
        "cpu" => Ok(Arc::new(CpuDevice::new(NumericMode::Fp32))),
        "ane" => bail!("device `ane` is unavailable: this build has no ANE device"),
        other => bail!("unknown device `{other}` (expected cpu or ane)"),
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

//! `anetrain devices`, and the `--device cpu|ane` choice every subcommand that runs kernels
//! shares.

use anetrain_device::ane::{self, AneDevice};
use anetrain_device::{CpuDevice, Device, DeviceError, DeviceSpec, NumericMode, OpenDevice};
use anetrain_device::{OpenError, PeakFlops};

/// Opens the device a command's flags specify; an error names the flag it comes from.
pub fn open(spec: &DeviceSpec) -> anyhow::Result<OpenDevice> {
    spec.open().map_err(flag_error)
}

/// A device's error, naming the flag it comes from.
pub fn flag_error(e: OpenError) -> anyhow::Error {
    match e {
        OpenError::UnknownChip(_) => anyhow::anyhow!("--simulate: {e}"),
        OpenError::SimulatedNotOnCpu(kind) => {
            anyhow::anyhow!("--simulate: {e}; drop --device {kind}")
        }
        OpenError::AneIsFp16(_) => anyhow::anyhow!("--precision: {e}"),
        e => e.into(),
    }
}

/// Lists the devices of this machine: the CPU always; the ANE with what it is, or why it is
/// unavailable.
pub fn run() -> anyhow::Result<()> {
    let cpu = CpuDevice::new(NumericMode::Fp32).info();
    println!("cpu  {}: numeric modes fp32 and fp16", cpu.name);
    match AneDevice::open() {
        Ok(device) => {
            println!("ane  {}", device.info().name);
            for line in ane_details(&device) {
                println!("       {line}");
            }
        }
        Err(DeviceError::Unavailable(reason)) => println!("ane  unavailable: {reason}"),
        Err(other) => println!("ane  unavailable: {other}"),
    }
    Ok(())
}

/// The rated peak, the compile budget and the chip's rules, one per line.
fn ane_details(device: &AneDevice) -> Vec<String> {
    let info = device.ane_info();
    let mut lines = Vec::new();
    match (info.chip, info.peak()) {
        (Some(chip), PeakFlops::Rated(flops)) => {
            let rated = chip.rated.map_or(String::new(), |r| {
                format!(" (Apple: {} TOPS {})", r.tops, r.precision)
            });
            lines.push(format!("rated peak {:.1} TFLOPS fp16{rated}", flops / 1e12));
        }
        (Some(chip), _) => lines.push(format!("no rated peak published for the {}", chip.name)),
        (None, _) => {
            lines.push("chip not in the table: no rated peak; the common rules assumed".into())
        }
    }
    lines.push(format!(
        "compiles: {} of {} used by this process (QoS {})",
        ane::process_compiles(),
        device.config().compile_budget,
        device.config().qos
    ));
    for rule in info.rules().rules {
        lines.push(format!(
            "rule {}: {} ({})",
            rule.rule.name(),
            rule.rule,
            rule.source
        ));
    }
    lines
}

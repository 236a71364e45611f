//! What the report says about the machine and its Neural Engine.

use anetrain_device::ane;
use anetrain_device::{AneDevice, PeakFlops};
use serde::{Deserialize, Serialize};

/// The machine the report ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `macos`, `linux`, … (Rust's name for the OS).
    pub os: String,
    /// `aarch64`, `x86_64`, …
    pub arch: String,
    /// `macOS 26.3`; on Linux the distribution and the kernel release.
    pub os_version: Option<String>,
    /// The CPU brand string: `Apple M4 Pro`, `Intel(R) Xeon(R) …`.
    pub cpu: Option<String>,
    /// Cores this process may use.
    pub cores: usize,
}

impl Machine {
    pub fn here() -> Machine {
        let (mac_cpu, macos) = ane::mac_host();
        Machine {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            os_version: macos.map(|v| v.to_string()).or_else(linux_version),
            cpu: mac_cpu.or_else(linux_cpu),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// `Debian GNU/Linux 13 (trixie), kernel 6.12.48`, from the files every Linux has.
fn linux_version() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let name = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim().trim_matches('"').to_string())
        });
    Some(match name {
        Some(name) => format!("{name}, kernel {}", release.trim()),
        None => format!("Linux, kernel {}", release.trim()),
    })
}

/// The first `model name` of `/proc/cpuinfo`.
fn linux_cpu() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The ANE as the report found it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AneStatus {
    pub available: bool,
    /// Why it is unavailable.
    pub reason: Option<String>,
    /// `Apple Neural Engine h16 (Apple M4 Pro, macOS 26.3)`.
    pub name: Option<String>,
    /// What the framework reports, e.g. `h16`.
    pub subtype: Option<String>,
    /// The chip's row in anetrain's table (`M4 Pro`), when it has one.
    pub chip: Option<String>,
    pub cpu_brand: Option<String>,
    pub macos: Option<String>,
    /// Apple's rated figure in fp16 TFLOPS, when the chip has one.
    pub rated_peak_tflops: Option<f64>,
    /// Compiles a process may make.
    pub compile_budget: Option<u64>,
    /// The chip's rules: `name: what (source)`.
    pub rules: Vec<String>,
}

impl AneStatus {
    pub fn of(device: &AneDevice) -> AneStatus {
        let info = device.ane_info();
        AneStatus {
            available: true,
            reason: None,
            name: Some(info.describe()),
            subtype: info.ane_subtype.clone(),
            chip: info.chip.map(|c| c.name.to_string()),
            cpu_brand: info.chip_brand.clone(),
            macos: info.macos.map(|v| v.to_string()),
            rated_peak_tflops: match info.peak() {
                PeakFlops::Rated(flops) => Some(flops / 1e12),
                _ => None,
            },
            compile_budget: Some(device.config().compile_budget),
            rules: info
                .rules()
                .rules
                .iter()
                .map(|r| format!("{}: {} ({})", r.rule.name(), r.rule, r.source))
                .collect(),
        }
    }

    pub fn unavailable(reason: String) -> AneStatus {
        AneStatus {
            available: false,
            reason: Some(reason),
            name: None,
            subtype: None,
            chip: None,
            cpu_brand: None,
            macos: None,
            rated_peak_tflops: None,
            compile_budget: None,
            rules: Vec::new(),
        }
    }

    /// The chip's generation as `--simulate` names it (`m4` for an M4 Pro), when the table
    /// knows the chip: latency models exist for the base chip of each generation.
    pub fn chip_generation(&self) -> Option<String> {
        let name = self.chip.as_ref()?;
        Some(name.split_whitespace().next()?.to_lowercase())
    }
}

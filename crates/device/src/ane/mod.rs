//! The Apple Neural Engine device: MIL programs compiled by the ANE's private in-memory
//! compiler and evaluated on the Neural Engine (spec section 1).
//!
//! This uses private, undocumented APIs of `AppleNeuralEngine.framework`, which may change
//! with any macOS update; every class and method is looked up by name when the device opens,
//! and a missing one is an [`DeviceError::Unavailable`] that names it.
//!
//! The Objective-C calls live in one file, `apple.rs`, built on Apple targets only. Everything
//! else is plain Rust, built and tested everywhere: the chip table ([`chip`]), the compile plan
//! (weights dictionary, surface layouts, failure hints), the shared temp directories, the
//! compile budget. On other platforms [`AneDevice::open`] returns `Unavailable`.

pub mod budget;
pub mod chip;
pub mod failure;
pub mod model_dir;
pub mod pacing;
pub mod plan;
pub mod rules;
pub mod surface;
pub mod version;
pub mod weights;

#[cfg(target_vendor = "apple")]
mod apple;

pub use budget::{process_compiles, DEFAULT_COMPILE_BUDGET};
pub use chip::{Chip, Rated, RatedPrecision};
pub use rules::{ChipRule, ChipRules, Rule, Severity, Violation};
pub use version::MacOsVersion;

use crate::{BudgetStatus, Device, DeviceError, DeviceInfo, Kernel, NumericMode, PeakFlops};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::Program;
use plan::CompilePlan;

/// The QoS every production call of the original uses; all values 0–63 measured the same.
pub const DEFAULT_QOS: u32 = 21;

/// How the device calls the compiler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AneConfig {
    /// The QoS passed to compile, load, eval and unload.
    pub qos: u32,
    /// Compiles this process may make (counted process-wide) before compiles are refused with
    /// [`DeviceError::BudgetExhausted`].
    pub compile_budget: u64,
}

impl Default for AneConfig {
    fn default() -> Self {
        AneConfig {
            qos: DEFAULT_QOS,
            compile_budget: DEFAULT_COMPILE_BUDGET,
        }
    }
}

/// What the machine says about its Neural Engine. Each field is `None` when the system does
/// not tell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AneInfo {
    /// The CPU brand string, e.g. `Apple M4 Pro`.
    pub chip_brand: Option<String>,
    /// The chip's row in the table, when it is known.
    pub chip: Option<&'static Chip>,
    /// What `_ANEDeviceInfo aneSubType` reports, e.g. `h16`.
    pub ane_subtype: Option<String>,
    pub macos: Option<MacOsVersion>,
}

impl AneInfo {
    /// The rules in force on this machine's chip.
    pub fn rules(&self) -> ChipRules {
        chip::rules_of(self.chip)
    }

    /// Apple's rated figure in fp16 FLOP/s, when the chip has one.
    pub fn peak(&self) -> PeakFlops {
        match self.chip.and_then(|c| c.rated) {
            Some(rated) => PeakFlops::Rated(rated.fp16_flops()),
            None => PeakFlops::Unknown,
        }
    }

    /// `Apple Neural Engine h16 (Apple M4 Pro, macOS 26.3)`, leaving out what is unknown.
    pub fn describe(&self) -> String {
        let mut name = "Apple Neural Engine".to_string();
        if let Some(subtype) = &self.ane_subtype {
            name.push(' ');
            name.push_str(subtype);
        }
        let details: Vec<String> = [self.chip_brand.clone(), self.macos.map(|v| v.to_string())]
            .into_iter()
            .flatten()
            .collect();
        if !details.is_empty() {
            name.push_str(&format!(" ({})", details.join(", ")));
        }
        name
    }
}

/// The CPU brand string and the macOS version of this Mac, whether or not its ANE opens (an
/// Intel Mac has no ANE but says what it is); `None` off Apple platforms.
pub fn mac_host() -> (Option<String>, Option<MacOsVersion>) {
    #[cfg(target_vendor = "apple")]
    {
        apple::host_facts()
    }
    #[cfg(not(target_vendor = "apple"))]
    {
        (None, None)
    }
}

/// Why the ANE device cannot exist on this build.
pub fn off_apple_silicon_reason() -> String {
    format!(
        "the ANE needs an Apple Silicon Mac (macOS on arm64); this is {} on {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The Neural Engine of this Mac.
pub struct AneDevice {
    config: AneConfig,
    info: AneInfo,
    #[cfg(target_vendor = "apple")]
    runtime: apple::Runtime,
    /// Off Apple targets the device cannot be made: this field has no value.
    #[cfg(not(target_vendor = "apple"))]
    unconstructible: std::convert::Infallible,
}

impl AneDevice {
    /// Opens the ANE with the default configuration (QoS 21, a budget of 100 compiles).
    pub fn open() -> Result<AneDevice, DeviceError> {
        AneDevice::open_with(AneConfig::default())
    }

    /// Loads the private framework and checks every class and method the device uses.
    pub fn open_with(config: AneConfig) -> Result<AneDevice, DeviceError> {
        #[cfg(target_vendor = "apple")]
        {
            let (runtime, info) = apple::Runtime::open()?;
            Ok(AneDevice {
                config,
                info,
                runtime,
            })
        }
        #[cfg(not(target_vendor = "apple"))]
        {
            let _ = config;
            Err(DeviceError::Unavailable(off_apple_silicon_reason()))
        }
    }

    pub fn config(&self) -> &AneConfig {
        &self.config
    }

    pub fn ane_info(&self) -> &AneInfo {
        &self.info
    }

    /// Compiles this process has used, by every ANE device in it.
    pub fn compiles_used(&self) -> u64 {
        process_compiles()
    }

    /// Compiles left before the budget refuses them.
    pub fn compiles_left(&self) -> u64 {
        self.config
            .compile_budget
            .saturating_sub(process_compiles())
    }
}

impl Device for AneDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: "ane",
            name: self.info.describe(),
            numeric: NumericMode::Fp16,
            peak: self.info.peak(),
            simulated: false,
        }
    }

    /// The process-wide budget, so that a training run checkpoints and restarts its process
    /// before a kernel set would pass it.
    fn compile_budget(&self) -> Option<BudgetStatus> {
        Some(BudgetStatus {
            used: process_compiles(),
            budget: self.config.compile_budget,
        })
    }

    fn chip_rules(&self) -> Option<ChipRules> {
        Some(self.info.rules())
    }

    /// Plans the compile in plain Rust (refusing bad input before it costs a compile), then
    /// compiles and loads on the ANE.
    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Kernel, DeviceError> {
        let plan = CompilePlan::new(program, weights, self.info.chip)?;
        #[cfg(target_vendor = "apple")]
        {
            self.runtime.compile(plan, &self.config)
        }
        #[cfg(not(target_vendor = "apple"))]
        {
            let _ = plan;
            match self.unconstructible {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_describes_what_is_known() {
        let info = AneInfo {
            chip_brand: Some("Apple M4 Pro".into()),
            chip: chip::identify("Apple M4 Pro"),
            ane_subtype: Some("h16".into()),
            macos: Some(MacOsVersion::new(26, 3, 0)),
        };
        assert_eq!(
            info.describe(),
            "Apple Neural Engine h16 (Apple M4 Pro, macOS 26.3)"
        );
        assert_eq!(info.peak(), PeakFlops::Rated(19e12));
        assert_eq!(AneInfo::default().describe(), "Apple Neural Engine");
        assert_eq!(AneInfo::default().peak(), PeakFlops::Unknown);
        assert_eq!(AneInfo::default().rules(), chip::rules_of(None));
    }

    #[test]
    fn the_default_config_is_the_originals() {
        let config = AneConfig::default();
        assert_eq!(config.qos, 21);
        assert_eq!(config.compile_budget, 100);
    }

    #[cfg(not(target_vendor = "apple"))]
    #[test]
    fn opening_off_a_mac_says_the_ane_needs_one() {
        match AneDevice::open() {
            Err(DeviceError::Unavailable(reason)) => {
                assert!(
                    reason.starts_with("the ANE needs an Apple Silicon Mac"),
                    "{reason}"
                );
                assert!(reason.contains(std::env::consts::OS));
            }
            Err(other) => panic!("expected Unavailable, got {other}"),
            Ok(_) => panic!("an ANE device opened off a Mac"),
        }
    }
}

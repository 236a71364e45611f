//! The peak-throughput sweep (the original `inmem_peak`, spec 6.3): chains of 1×1 convs deep
//! enough that the fixed cost of an eval vanishes against the arithmetic, timed, and compared
//! with the device's peak where that is known.

use crate::error::ProbeError;
use crate::kernels::ConvChain;
use crate::stats::{self, Spread};
use crate::testbed::Testbed;
use anetrain_device::memory::physical_memory;
use anetrain_device::{DeviceInfo, PeakFlops};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub const STAGE: &str = "peak sweep";

/// One row of the sweep: `depth` convs of `channels` channels at spatial size `spatial`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainShape {
    pub depth: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl ChainShape {
    pub const fn new(depth: usize, channels: usize, spatial: usize) -> ChainShape {
        ChainShape {
            depth,
            channels,
            spatial,
        }
    }

    /// FLOPs of one eval: 2·C_in·C_out·S per conv.
    pub fn flops(&self) -> u64 {
        self.chain().flops()
    }

    /// GFLOP of one eval (10⁹ FLOP).
    pub fn gflop(&self) -> f64 {
        self.flops() as f64 / 1e9
    }

    /// fp16 weights in MiB (2²⁰ bytes), the original's "W (MB)".
    pub fn weight_mib(&self) -> f64 {
        self.chain().weight_bytes() as f64 / (1u64 << 20) as f64
    }

    /// FLOPs of one eval, `None` where they overflow 64 bits.
    fn checked_flops(&self) -> Option<u64> {
        let per_conv = (self.channels as u64)
            .checked_mul(self.channels as u64)?
            .checked_mul(self.spatial as u64)?
            .checked_mul(2)?;
        per_conv.checked_mul(self.depth as u64)
    }

    /// The least memory the chain takes on a device, in bytes: each weight as an fp16 blob
    /// and an f32 copy in the kernel, and an input and an output in f32. `None` where that
    /// overflows 64 bits.
    pub fn memory_bytes(&self) -> Option<u64> {
        let weights = (self.channels as u64)
            .checked_mul(self.channels as u64)?
            .checked_mul(self.depth as u64)?
            .checked_mul(2 + 4)?;
        let buffers = (self.channels as u64)
            .checked_mul(self.spatial as u64)?
            .checked_mul(2 * 4)?;
        weights.checked_add(buffers)
    }

    /// The same row with its depth divided by `divisor` (rounded up, at least one conv).
    pub fn scaled_down(&self, divisor: usize) -> ChainShape {
        ChainShape {
            depth: self.depth.div_ceil(divisor.max(1)).max(1),
            ..*self
        }
    }

    pub fn chain(&self) -> ConvChain {
        ConvChain::peak(self.depth, self.channels, self.spatial)
    }
}

impl fmt::Display for ChainShape {
    /// `96x conv 512ch sp64`, as the original prints its rows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x conv {}ch sp{}",
            self.depth, self.channels, self.spatial
        )
    }
}

impl FromStr for ChainShape {
    type Err = String;

    /// Parses `DEPTHxCHANNELSspSPATIAL`, e.g. `96x512sp64`; every number at least 1.
    fn from_str(text: &str) -> Result<ChainShape, String> {
        let bad = || format!("`{text}`: expected DEPTHxCHANNELSspSPATIAL, e.g. 96x512sp64");
        let (depth, rest) = text.split_once('x').ok_or_else(bad)?;
        let (channels, spatial) = rest.split_once("sp").ok_or_else(bad)?;
        let number = |s: &str| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad()),
        };
        let shape = ChainShape::new(number(depth)?, number(channels)?, number(spatial)?);
        if shape.memory_bytes().is_none() || shape.checked_flops().is_none() {
            return Err(format!(
                "`{text}`: a chain this large overflows its byte and FLOP counts"
            ));
        }
        Ok(shape)
    }
}

/// The original's rows as the M4 probe reported them (spec 8.2), then the 128×512 chain at
/// larger spatial sizes (the M3 Pro peaked at spatial 2048).
pub const ORIGINAL_ROWS: [ChainShape; 7] = [
    ChainShape::new(96, 512, 64),
    ChainShape::new(128, 512, 64),
    ChainShape::new(256, 256, 64),
    ChainShape::new(64, 512, 64),
    ChainShape::new(128, 512, 256),
    ChainShape::new(128, 512, 1024),
    ChainShape::new(128, 512, 2048),
];

/// By how much chain depths are divided by default on a device: on the CPU the original
/// sizes would take minutes (a 128-deep 512-channel chain at spatial 2048 is 137 GFLOP per
/// eval), so the CPU runs chains an eighth as deep; the per-conv shape, which decides
/// efficiency, stays the same.
pub fn default_depth_divisor(device: &DeviceInfo) -> usize {
    if device.kind == "cpu" {
        8
    } else {
        1
    }
}

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct PeakConfig {
    /// The rows at their nominal depth.
    pub rows: Vec<ChainShape>,
    /// Every row's depth is divided by this (see [`default_depth_divisor`]).
    pub depth_divisor: usize,
    pub warmup_evals: usize,
    pub timed_evals: usize,
    /// The peak to compare against, in FLOP/s.
    pub peak: PeakFlops,
}

/// One measured row.
#[derive(Clone, Debug, PartialEq)]
pub struct PeakRow {
    /// The row as asked for.
    pub nominal: ChainShape,
    /// The row as run (depth divided).
    pub shape: ChainShape,
    pub compile: Duration,
    /// Of the timed evals.
    pub eval: Spread,
    /// FLOP/s at the median eval.
    pub flops_per_second: f64,
    /// Of the device's peak, when the peak is known.
    pub percent_of_peak: Option<f64>,
}

impl PeakRow {
    pub fn tflops(&self) -> f64 {
        self.flops_per_second / 1e12
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeakReport {
    pub device: DeviceInfo,
    pub simulated: bool,
    pub clock_simulated: bool,
    pub config: PeakConfig,
    pub rows: Vec<PeakRow>,
}

/// Measures every row in order, handing each to `on_row` as soon as it is done (a sweep on
/// a slow device takes a while).
pub fn run_peak(
    bed: &Testbed,
    config: &PeakConfig,
    on_row: &mut dyn FnMut(&PeakRow),
) -> Result<PeakReport, ProbeError> {
    if config.rows.is_empty() || config.warmup_evals == 0 || config.timed_evals == 0 {
        return Err(ProbeError::Settings {
            stage: STAGE,
            message: "the sweep needs at least one row, one warm-up eval and one timed eval".into(),
        });
    }
    if let Some(total) = physical_memory() {
        for nominal in &config.rows {
            let shape = nominal.scaled_down(config.depth_divisor);
            let need = shape.memory_bytes().unwrap_or(u64::MAX);
            if need > total {
                return Err(ProbeError::Settings {
                    stage: STAGE,
                    message: format!(
                        "row {shape} needs at least {:.1} GiB for its weights and buffers, and \
                         this machine has {:.1} GiB",
                        need as f64 / f64::from(1u32 << 30),
                        total as f64 / f64::from(1u32 << 30)
                    ),
                });
            }
        }
    }
    let mut rows = Vec::with_capacity(config.rows.len());
    for nominal in &config.rows {
        let row = measure_row(bed, config, *nominal)?;
        on_row(&row);
        rows.push(row);
    }
    Ok(PeakReport {
        device: bed.device.info(),
        simulated: bed.is_simulated(),
        clock_simulated: bed.clock.is_simulated(),
        config: config.clone(),
        rows,
    })
}

fn measure_row(
    bed: &Testbed,
    config: &PeakConfig,
    nominal: ChainShape,
) -> Result<PeakRow, ProbeError> {
    let shape = nominal.scaled_down(config.depth_divisor);
    let (mut kernel, compile) = bed.compile(STAGE, shape.to_string(), shape.chain())?;
    for _ in 0..config.warmup_evals {
        bed.eval_and_verify(STAGE, &mut kernel)?;
    }
    let evals = bed.eval_repeatedly(STAGE, &mut kernel, config.timed_evals)?;
    kernel.verify(STAGE)?;
    let eval = Spread::of_intervals(&evals).unwrap_or(Spread::ZERO);
    let flops_per_second = stats::flops_per_second(shape.flops(), 1, eval.median);
    Ok(PeakRow {
        nominal,
        shape,
        compile: compile.len(),
        eval,
        flops_per_second,
        percent_of_peak: config
            .peak
            .value()
            .map(|peak| 100.0 * flops_per_second / peak),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_print_alike() {
        let row: ChainShape = "96x512sp64".parse().unwrap();
        assert_eq!(row, ChainShape::new(96, 512, 64));
        assert_eq!(row.to_string(), "96x conv 512ch sp64");
        assert!("96x512".parse::<ChainShape>().is_err());
        assert!("ax512sp64".parse::<ChainShape>().is_err());
        assert!("0x512sp64".parse::<ChainShape>().is_err());
        // 2·D·C²·S past 64 bits is refused by the parser, not wrapped.
        let err = "1000000x1000000sp1000000"
            .parse::<ChainShape>()
            .unwrap_err();
        assert!(err.contains("overflows its byte and FLOP counts"), "{err}");
        let row: ChainShape = "2x3sp5".parse().unwrap();
        assert_eq!(row.memory_bytes(), Some(2 * 3 * 3 * 6 + 3 * 5 * 8));
    }

    #[test]
    fn scaling_keeps_at_least_one_conv() {
        let row = ChainShape::new(96, 512, 64);
        assert_eq!(row.scaled_down(8).depth, 12);
        assert_eq!(ChainShape::new(3, 8, 8).scaled_down(8).depth, 1);
        assert_eq!(row.scaled_down(0).depth, 96);
    }
}

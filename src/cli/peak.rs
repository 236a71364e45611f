//! `anetrain peak`: the peak-throughput sweep.

use super::probe::{write_report, DeviceArgs};
use anetrain_device::cpu::best_fma_peak;
use anetrain_device::{DeviceInfo, PeakFlops};
use anetrain_probe::peak::{default_depth_divisor, ORIGINAL_ROWS};
use anetrain_probe::report::{peak_header, peak_row_line, peak_to_json};
use anetrain_probe::{run_peak, ChainShape, PeakConfig};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct PeakArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Also write every figure, with its unit, to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Divide every chain's depth by N [default: 8 on the CPU device, 1 elsewhere].
    #[arg(long, value_name = "N")]
    depth_divisor: Option<usize>,
    /// Measure this row instead of the original's, e.g. 96x512sp64 (DEPTHxCHANNELSspSPATIAL);
    /// repeat for several.
    #[arg(long = "row", value_name = "DxCspS")]
    rows: Vec<ChainShape>,
    /// Untimed evals of each chain before it is timed.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed evals per chain.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// How long the FMA loops that measure the CPU's peak run in all, in ms.
    #[arg(long, default_value_t = 500, hide = true)]
    fma_ms: u64,
}

pub fn run(args: PeakArgs) -> anyhow::Result<()> {
    let bed = args.device.testbed()?;
    let info = bed.device.info();
    let config = PeakConfig {
        rows: if args.rows.is_empty() {
            ORIGINAL_ROWS.to_vec()
        } else {
            args.rows.clone()
        },
        depth_divisor: args
            .depth_divisor
            .unwrap_or_else(|| default_depth_divisor(&info)),
        warmup_evals: args.warmup,
        timed_evals: args.reps,
        peak: device_peak(&info, Duration::from_millis(args.fma_ms)),
    };
    println!(
        "{}",
        peak_header(
            &info,
            bed.is_simulated(),
            bed.clock.is_simulated(),
            &config.peak,
            config.depth_divisor,
            config.warmup_evals,
            config.timed_evals
        )
    );
    let report = run_peak(&bed, &config, &mut |row| println!("{}", peak_row_line(row)))
        .context("peak sweep failed")?;
    if let Some(path) = &args.json {
        write_report(path, &peak_to_json(&report))?;
    }
    Ok(())
}

/// How many short FMA runs the CPU's peak is the best of.
const FMA_RUNS: u32 = 5;

/// The peak to compare against: the device's own figure if it has one; for the real CPU
/// device, an FMA loop on every core measured now, the best of [`FMA_RUNS`] short runs (a
/// peak is the best the cores do, and a busy host takes some runs down); none for a
/// simulated device, whose modelled times the host's peak says nothing about.
fn device_peak(info: &DeviceInfo, fma_duration: Duration) -> PeakFlops {
    match &info.peak {
        PeakFlops::Unknown if info.kind == "cpu" && !info.simulated => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            PeakFlops::Measured(best_fma_peak(threads, FMA_RUNS, fma_duration / FMA_RUNS))
        }
        known => known.clone(),
    }
}

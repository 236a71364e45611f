//! `anetrain parity`: the kernel parity suite, from the binary, so that a Mac user needs no
//! cargo to check their ANE.

use super::probe::write_report;
use anetrain_device::parity::{run_suite, CaseResult, Outcome, Target};
use anetrain_device::{AneDevice, DeviceKind};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ParityArgs {
    /// The device besides the CPU device's two modes: cpu (none), or ane.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also write every result to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: ParityArgs) -> anyhow::Result<()> {
    let kind: DeviceKind = args.device.parse()?;
    let ane = match kind {
        DeviceKind::Cpu => None,
        DeviceKind::Ane => {
            Some(AneDevice::open().map_err(|e| anyhow::anyhow!("--device ane: {e}"))?)
        }
    };
    let target = ane.as_ref().map(|device| Target {
        name: "ane".into(),
        device,
        rules: Some(device.ane_info().rules()),
    });
    let results = run_suite(target.as_ref(), &mut |r| println!("{r}"))
        .map_err(|e| anyhow::anyhow!("a program of the parity suite does not type-check: {e}"))?;
    let count = |label: &str| {
        results
            .iter()
            .filter(|r| r.outcome.label() == label)
            .count()
    };
    let (failed, errors) = (count("fail"), count("error"));
    println!(
        "parity: {} passed, {failed} failed, {errors} errors, {} skipped, of {} results",
        count("pass"),
        count("skipped"),
        results.len()
    );
    if let Some(path) = &args.json {
        write_report(path, &parity_to_json(&args.device, &results))?;
    }
    if failed + errors > 0 {
        anyhow::bail!(
            "{} of {} parity results failed",
            failed + errors,
            results.len()
        );
    }
    Ok(())
}

/// The results as JSON: one object per case and target.
pub fn parity_to_json(device: &str, results: &[CaseResult]) -> Value {
    let rows: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut row = json!({
                "case": r.case,
                "target": r.target,
                "against": r.against,
                "outcome": r.outcome.label(),
            });
            match &r.outcome {
                Outcome::Passed(d) | Outcome::Failed(d) => {
                    row["worst"] = json!({
                        "index": d.index,
                        "got": finite_or_null(d.got),
                        "want": finite_or_null(d.want),
                        "share_of_tolerance": finite_or_null(d.share_of_tolerance),
                        "max_abs_error": finite_or_null(d.max_abs_error),
                    });
                    row["beyond_tolerance"] = json!(d.beyond);
                    row["elements"] = json!(d.len);
                    row["tolerance"] =
                        json!({ "atol": d.tolerance.atol, "rtol": d.tolerance.rtol });
                }
                Outcome::Skipped(why) | Outcome::Error(why) => row["reason"] = json!(why),
            }
            row
        })
        .collect();
    json!({ "command": "parity", "device": device, "results": rows })
}

/// JSON has no NaN or infinity: those are `null`.
fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

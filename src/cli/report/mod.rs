//! `anetrain report`: one command for a Mac user's first run, whose output can be pasted into
//! an issue.
//!
//! The report runs each part as a command of this same binary in a process of its own: the
//! parity suite, `probe` and `peak` on every device, and a short `train` per delivery strategy.
//! A process per part gives each its own compile budget (the ANE allows about 100 compiles per
//! process), and keeps a part that crashes inside the private framework from taking the
//! report with it. Each part's JSON and output are collected into `report.json` and summed up
//! in `report.md`.

mod machine;
mod parts;
mod render;
mod train_summary;

pub use machine::{AneStatus, Machine};
pub use parts::{Part, PartStatus};
pub use render::render_markdown;
pub use train_summary::TrainSummary;

use anetrain_device::decorate::ChipProfile;
use anetrain_device::{AneDevice, DeviceError};
use anetrain_model::io::atomic::write_atomic;
use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// What `report.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldReport {
    /// Always `anetrain-field-report`.
    pub format: String,
    /// The layout of this file: 1.
    pub version: u32,
    /// The version of anetrain that wrote it.
    pub anetrain: String,
    /// Seconds since the Unix epoch when the report started.
    pub created_unix: u64,
    pub seconds: f64,
    pub machine: Machine,
    pub ane: AneStatus,
    pub settings: Settings,
    pub parts: Vec<Part>,
}

pub const FORMAT: &str = "anetrain-field-report";
pub const FORMAT_VERSION: u32 = 1;

/// How the report was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    /// The model of the training runs.
    pub model: String,
    /// Training steps per delivery strategy and device.
    pub steps: u64,
    /// The chip whose latency model runs beside the real devices.
    pub simulate: String,
}

impl FieldReport {
    /// Parts that did not end well.
    pub fn failures(&self) -> impl Iterator<Item = &Part> {
        self.parts.iter().filter(|p| p.status != PartStatus::Ok)
    }
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The folder to write to: report.json, report.md, and each part's log (logs/) and
    /// training run (runs/).
    #[arg(long, default_value = "anetrain-report")]
    out: PathBuf,
    /// A shorter report: 10 training steps per strategy, fewer probe repetitions, one peak row.
    #[arg(long)]
    quick: bool,
    /// Training steps per delivery strategy and device [default: 100; 10 with --quick].
    #[arg(long)]
    steps: Option<u64>,
    /// The chip whose latency model is measured beside the real devices [default: this
    /// Mac's chip, else m4].
    #[arg(long, value_name = "CHIP")]
    simulate: Option<String>,
    /// Seconds a part may run before it is stopped and reported as timed out.
    #[arg(long, default_value_t = 900)]
    part_timeout: u64,
}

/// The model every training part trains: the one the embedded corpus has a tokenizer for.
const MODEL: &str = "tiny";

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let created_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ane_device = AneDevice::open();
    let ane = match &ane_device {
        Ok(device) => AneStatus::of(device),
        Err(DeviceError::Unavailable(reason)) => AneStatus::unavailable(reason.clone()),
        Err(other) => AneStatus::unavailable(other.to_string()),
    };
    let simulate = match &args.simulate {
        Some(name) => name.clone(),
        None => ane
            .chip_generation()
            .filter(|g| ChipProfile::by_name(g).is_some())
            .unwrap_or_else(|| "m4".into()),
    };
    if ChipProfile::by_name(&simulate).is_none() {
        anyhow::bail!(
            "--simulate: no latency model of `{simulate}` (there are {})",
            ChipProfile::NAMES.join(", ")
        );
    }
    let settings = Settings {
        quick: args.quick,
        model: MODEL.into(),
        steps: args
            .steps
            .unwrap_or(if args.quick { 10 } else { 100 })
            .max(1),
        simulate,
    };
    // Each part's process opens the ANE for itself; the report holds no session meanwhile.
    drop(ane_device);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    parts::clear_earlier(&args.out);
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let plan = parts::plan(&settings, ane.available);
    println!(
        "anetrain report: {} parts into {}{}",
        plan.len(),
        args.out.display(),
        if ane.available {
            String::new()
        } else {
            format!(
                "; the ANE is unavailable ({})",
                ane.reason.as_deref().unwrap_or("no reason given")
            )
        }
    );
    let timeout = Duration::from_secs(args.part_timeout.max(1));
    let mut done = Vec::with_capacity(plan.len());
    for (i, planned) in plan.iter().enumerate() {
        let part = parts::run(&exe, &args.out, planned, timeout)?;
        println!(
            "[{:>2}/{}] {:<34} {} ({:.1} s)",
            i + 1,
            plan.len(),
            part.label,
            part.describe_status(),
            part.seconds
        );
        done.push(part);
    }
    let report = FieldReport {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        anetrain: env!("CARGO_PKG_VERSION").into(),
        created_unix,
        seconds: started.elapsed().as_secs_f64(),
        machine: Machine::here(),
        ane,
        settings,
        parts: done,
    };
    let json_path = args.out.join("report.json");
    let markdown_path = args.out.join("report.md");
    let mut json = serde_json::to_vec_pretty(&report).context("cannot encode the report")?;
    json.push(b'\n');
    write_atomic(&json_path, &json)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    write_atomic(&markdown_path, render_markdown(&report).as_bytes())
        .with_context(|| format!("cannot write {}", markdown_path.display()))?;
    println!(
        "report written to {} and {}",
        json_path.display(),
        markdown_path.display()
    );
    let failed: Vec<&str> = report.failures().map(|p| p.label.as_str()).collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} parts did not succeed ({}); their logs are in {}",
            failed.len(),
            report.parts.len(),
            failed.join(", "),
            args.out.join("logs").display()
        );
    }
    Ok(())
}

//! The parts of a report, each a command of this binary run in a process of its own.

use super::train_summary::TrainSummary;
use super::Settings;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a part ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartStatus {
    /// Exit status 0.
    Ok,
    /// A non-zero exit status: the command reported an error (its log says which).
    Failed,
    /// Ended by a signal, e.g. a crash inside the framework.
    Crashed,
    /// Still running after `--part-timeout`, and stopped.
    TimedOut,
    /// The process could not be started.
    NotStarted,
}

impl PartStatus {
    /// `ok`, `failed (exit 1)`, `crashed (signal 11)`, …
    pub fn describe(self, code: Option<i32>) -> String {
        match (self, code) {
            (PartStatus::Ok, _) => "ok".into(),
            (PartStatus::Failed, Some(c)) => format!("failed (exit {c})"),
            (PartStatus::Crashed, Some(s)) => format!("crashed (signal {s})"),
            (PartStatus::Failed, None) => "failed".into(),
            (PartStatus::Crashed, None) => "crashed".into(),
            (PartStatus::TimedOut, _) => "timed out".into(),
            (PartStatus::NotStarted, _) => "not started".into(),
        }
    }
}

/// One part as it ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// `probe-cpu`, `train-ane-double-buffer`: also the name of its log.
    pub label: String,
    /// `parity`, `probe`, `peak` or `train`.
    pub kind: String,
    /// `ane`, `cpu`, or `sim-<chip>` (the CPU device behind the chip's latency model).
    pub device: String,
    /// The delivery strategy of a training part.
    pub strategy: Option<String>,
    /// The command's arguments after `anetrain`.
    pub command: Vec<String>,
    pub status: PartStatus,
    /// The exit status, or the signal of a crash.
    pub exit_code: Option<i32>,
    pub seconds: f64,
    /// The command's stdout and stderr, relative to the report folder.
    pub log: String,
    /// A training part's run folder (its checkpoints removed), relative to the report folder.
    pub run_folder: Option<String>,
    /// The last lines of the log when the part did not succeed.
    pub error: Option<String>,
    /// The command's figures: the JSON of `parity`, `probe` and `peak`, a [`TrainSummary`]
    /// of a training run.
    pub result: Option<serde_json::Value>,
}

/// A part to run.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedPart {
    pub label: String,
    pub kind: &'static str,
    pub device: String,
    pub strategy: Option<&'static str>,
    /// Arguments with paths relative to the report folder, which [`run`] puts in front.
    pub args: Vec<Arg>,
    /// Where the command writes its JSON, relative to the report folder.
    pub json: Option<String>,
    pub run_folder: Option<String>,
}

/// An argument of a part's command.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Plain(String),
    /// A path inside the report folder.
    InReport(String),
}

/// The delivery strategies a report trains with.
pub const STRATEGIES: [&str; 3] = ["recompile", "double-buffer", "dynamic"];

fn plain(args: &[&str]) -> Vec<Arg> {
    args.iter().map(|a| Arg::Plain(a.to_string())).collect()
}

/// The parts of a report: the parity suite (on the ANE where there is one), then on each
/// device (the ANE, the CPU, the simulated chip) the probe, the peak sweep and a training run
/// per strategy.
pub fn plan(settings: &Settings, ane_available: bool) -> Vec<PlannedPart> {
    let sim = format!("sim-{}", settings.simulate);
    let mut devices: Vec<(String, Vec<Arg>)> = Vec::new();
    if ane_available {
        devices.push(("ane".into(), plain(&["--device", "ane"])));
    }
    devices.push(("cpu".into(), plain(&["--device", "cpu"])));
    devices.push((sim, plain(&["--simulate", &settings.simulate])));

    let mut parts = Vec::new();
    let parity_device = if ane_available { "ane" } else { "cpu" };
    let json = format!("parts/parity-{parity_device}.json");
    parts.push(PlannedPart {
        label: format!("parity-{parity_device}"),
        kind: "parity",
        device: parity_device.into(),
        strategy: None,
        args: [
            plain(&["parity", "--device", parity_device, "--json"]),
            vec![Arg::InReport(json.clone())],
        ]
        .concat(),
        json: Some(json),
        run_folder: None,
    });
    for (device, flags) in &devices {
        for (kind, quick) in [
            (
                "probe",
                plain(&[
                    "--evals",
                    "100",
                    "--pairs",
                    "50",
                    "--compiles",
                    "5",
                    "--max-loaded",
                    "16",
                ]),
            ),
            ("peak", plain(&["--row", "8x512sp64", "--reps", "3"])),
        ] {
            let label = format!("{kind}-{device}");
            let json = format!("parts/{label}.json");
            let mut args = plain(&[kind]);
            args.extend(flags.iter().cloned());
            args.push(Arg::Plain("--json".into()));
            args.push(Arg::InReport(json.clone()));
            if settings.quick {
                args.extend(quick);
            }
            parts.push(PlannedPart {
                label,
                kind,
                device: device.clone(),
                strategy: None,
                args,
                json: Some(json),
                run_folder: None,
            });
        }
    }
    for (device, flags) in &devices {
        for strategy in STRATEGIES {
            let label = format!("train-{device}-{strategy}");
            let folder = format!("runs/{label}");
            let mut args = plain(&["train"]);
            args.extend(flags.iter().cloned());
            // The simulated chip computes as the ANE does.
            if device.starts_with("sim-") {
                args.extend(plain(&["--precision", "fp16"]));
            }
            args.extend(plain(&[
                "--model",
                &settings.model,
                "--steps",
                &settings.steps.to_string(),
                "--weights",
                strategy,
                "--quiet",
                "--overwrite",
                "--out",
            ]));
            args.push(Arg::InReport(folder.clone()));
            parts.push(PlannedPart {
                label,
                kind: "train",
                device: device.clone(),
                strategy: Some(strategy),
                args,
                json: None,
                run_folder: Some(folder),
            });
        }
    }
    parts
}

/// Runs a part's command with `exe` and collects what it wrote. Only a failure to write the
/// report's own files is an error; how the part went is in the returned [`Part`].
pub fn run(
    exe: &Path,
    out: &Path,
    planned: &PlannedPart,
    timeout: Duration,
) -> anyhow::Result<Part> {
    let args: Vec<String> = planned
        .args
        .iter()
        .map(|a| match a {
            Arg::Plain(s) => s.clone(),
            Arg::InReport(rel) => out.join(rel).display().to_string(),
        })
        .collect();
    let log = format!("logs/{}.log", planned.label);
    for dir in ["logs", "parts", "runs"] {
        let dir = out.join(dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A file left by an earlier report must not pass for this one's.
    if let Some(json) = &planned.json {
        let _ = std::fs::remove_file(out.join(json));
    }
    let log_path = out.join(&log);
    let log_file =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let stderr = log_file
        .try_clone()
        .with_context(|| format!("cannot share {}", log_path.display()))?;
    let started = Instant::now();
    let spawned = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(stderr)
        .spawn();
    let (status, exit_code, spawn_error) = match spawned {
        Err(e) => (
            PartStatus::NotStarted,
            None,
            Some(format!("cannot start {}: {e}", exe.display())),
        ),
        Ok(mut child) => {
            let ended = wait_with_timeout(&mut child, timeout)
                .with_context(|| format!("cannot wait for part {}", planned.label))?;
            let (status, code) = classify(ended);
            (status, code, None)
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut result = None;
    let mut notes = Vec::new();
    if let Some(json) = &planned.json {
        match std::fs::read_to_string(out.join(json)) {
            Ok(text) => match serde_json::from_str(&text) {
                Ok(value) => result = Some(value),
                Err(e) => notes.push(format!("{json} is not JSON: {e}")),
            },
            Err(_) if status != PartStatus::Ok => {}
            Err(e) => notes.push(format!("{json} was not written: {e}")),
        }
    }
    if let Some(folder) = &planned.run_folder {
        let dir = out.join(folder);
        match TrainSummary::of_run(&dir) {
            Ok(summary) => result = serde_json::to_value(summary).ok(),
            Err(e) if status == PartStatus::Ok => notes.push(e),
            Err(_) => {}
        }
        remove_checkpoints(&dir);
    }
    let status = if status == PartStatus::Ok && !notes.is_empty() {
        PartStatus::Failed
    } else {
        status
    };
    let error = (status != PartStatus::Ok).then(|| {
        let mut lines = spawn_error.into_iter().collect::<Vec<_>>();
        lines.extend(notes);
        lines.push(log_tail(&log_path, 8));
        lines.retain(|l| !l.is_empty());
        lines.join("\n")
    });
    Ok(Part {
        label: planned.label.clone(),
        kind: planned.kind.into(),
        device: planned.device.clone(),
        strategy: planned.strategy.map(str::to_string),
        command: planned
            .args
            .iter()
            .map(|a| match a {
                Arg::Plain(s) | Arg::InReport(s) => s.clone(),
            })
            .collect(),
        status,
        exit_code,
        seconds,
        log,
        run_folder: planned.run_folder.clone(),
        error,
        result,
    })
}

/// The child's exit status, or `None` when it ran past `timeout` and was killed.
fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn classify(ended: Option<ExitStatus>) -> (PartStatus, Option<i32>) {
    let Some(status) = ended else {
        return (PartStatus::TimedOut, None);
    };
    if status.success() {
        return (PartStatus::Ok, Some(0));
    }
    if let Some(code) = status.code() {
        return (PartStatus::Failed, Some(code));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        (PartStatus::Crashed, status.signal())
    }
    #[cfg(not(unix))]
    (PartStatus::Crashed, None)
}

/// The last `n` lines of a log that say something.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A report's training runs keep their metrics, plot and efficiency report, not their
/// checkpoints (12 MB each for `tiny`).
fn remove_checkpoints(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ckpt-") && name.ends_with(".bin") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

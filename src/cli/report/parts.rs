//! The parts of a report, each a command of this binary run in a process of its own.

use super::train_summary::TrainSummary;
use super::Settings;
use anetrain_train::checkpoint::list_checkpoints;
use anetrain_train::run::RunFolder;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
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
    /// Exit status 0, but the figures it should have written are missing or unreadable.
    BadOutput,
}

impl PartStatus {}

impl Part {
    /// `ok`, `failed (exit 1)`, `crashed (signal 11)`, …
    pub fn describe_status(&self) -> String {
        match (self.status, self.exit_code, self.signal) {
            (PartStatus::Ok, ..) => "ok".into(),
            (PartStatus::Failed, Some(c), _) => format!("failed (exit {c})"),
            (PartStatus::Failed, None, _) => "failed".into(),
            (PartStatus::Crashed, _, Some(s)) => format!("crashed (signal {s})"),
            (PartStatus::Crashed, _, None) => "crashed".into(),
            (PartStatus::TimedOut, ..) => "timed out".into(),
            (PartStatus::NotStarted, ..) => "not started".into(),
            (PartStatus::BadOutput, ..) => "no figures".into(),
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
    /// The exit status, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal that ended a crashed process.
    pub signal: Option<i32>,
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
    let args: Vec<OsString> = planned
        .args
        .iter()
        .map(|a| match a {
            Arg::Plain(s) => OsString::from(s),
            Arg::InReport(rel) => out.join(rel).into_os_string(),
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
    let (status, exit_code, signal, spawn_error) = match spawned {
        Err(e) => (
            PartStatus::NotStarted,
            None,
            None,
            Some(format!("cannot start {}: {e}", exe.display())),
        ),
        Ok(mut child) => {
            let ended = wait_with_timeout(&mut child, timeout)
                .with_context(|| format!("cannot wait for part {}", planned.label))?;
            let (status, code, signal) = classify(ended);
            (status, code, signal, None)
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
        PartStatus::BadOutput
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
        signal,
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

/// How a process ended: its status, exit code and signal.
fn classify(ended: Option<ExitStatus>) -> (PartStatus, Option<i32>, Option<i32>) {
    let Some(status) = ended else {
        return (PartStatus::TimedOut, None, None);
    };
    if let Some(code) = status.code() {
        let ok = if code == 0 {
            PartStatus::Ok
        } else {
            PartStatus::Failed
        };
        return (ok, Some(code), None);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        (PartStatus::Crashed, None, status.signal())
    }
    #[cfg(not(unix))]
    (PartStatus::Crashed, None, None)
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
    for (_, path) in list_checkpoints(dir) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes the files of `dir` whose names `matches` takes (none if `dir` is not a folder).
fn remove_files(dir: &Path, matches: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(&matches) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes what an earlier report left in `out`: its two files, every part's JSON and log,
/// and the files of its training runs (then their folders, if that empties them), so that
/// nothing of it passes for this report's, even if this one stops halfway. Anything else in
/// `out` stays.
pub fn clear_earlier(out: &Path) {
    remove_files(out, |name| name == "report.json" || name == "report.md");
    remove_files(&out.join("parts"), |name| name.ends_with(".json"));
    remove_files(&out.join("logs"), |name| name.ends_with(".log"));
    let Ok(runs) = std::fs::read_dir(out.join("runs")) else {
        return;
    };
    for run in runs.flatten() {
        if run
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("train-"))
        {
            let dir = run.path();
            for file in RunFolder::new(&dir).run_files() {
                let _ = std::fs::remove_file(file);
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            quick: true,
            model: "tiny".into(),
            steps: 7,
            simulate: "m3".into(),
        }
    }

    fn command(p: &PlannedPart) -> String {
        let words: Vec<&str> = p
            .args
            .iter()
            .map(|a| match a {
                Arg::Plain(s) | Arg::InReport(s) => s.as_str(),
            })
            .collect();
        words.join(" ")
    }

    #[test]
    fn with_an_ane_every_part_runs_there_too_and_parity_runs_on_it() {
        let ane = plan(&settings(), true);
        let labels: Vec<&str> = ane.iter().map(|p| p.label.as_str()).collect();
        let mut want = vec!["parity-ane".to_string()];
        for device in ["ane", "cpu", "sim-m3"] {
            want.push(format!("probe-{device}"));
            want.push(format!("peak-{device}"));
        }
        for device in ["ane", "cpu", "sim-m3"] {
            for s in STRATEGIES {
                want.push(format!("train-{device}-{s}"));
            }
        }
        assert_eq!(labels, want);
        assert_eq!(
            command(&ane[0]),
            "parity --device ane --json parts/parity-ane.json"
        );
        let probe_ane = ane.iter().find(|p| p.label == "probe-ane").unwrap();
        assert!(command(probe_ane)
            .starts_with("probe --device ane --json parts/probe-ane.json --evals 100"));
        let train = ane
            .iter()
            .find(|p| p.label == "train-sim-m3-dynamic")
            .unwrap();
        assert_eq!(
            command(train),
            "train --simulate m3 --precision fp16 --model tiny --steps 7 --weights dynamic \
             --quiet --overwrite --out runs/train-sim-m3-dynamic"
        );
        assert_eq!(
            train.run_folder.as_deref(),
            Some("runs/train-sim-m3-dynamic")
        );
        // Without --quick the probe and peak keep their own defaults.
        let full = plan(
            &Settings {
                quick: false,
                ..settings()
            },
            false,
        );
        assert_eq!(
            command(&full[1]),
            "probe --device cpu --json parts/probe-cpu.json"
        );
        assert_eq!(full[0].label, "parity-cpu");
        assert_eq!(full.len(), 11);
    }

    /// A part whose command is `sh -c SCRIPT`.
    #[cfg(unix)]
    fn shell(script: &str, timeout: Duration) -> Part {
        let out = tempfile::tempdir().unwrap();
        let planned = PlannedPart {
            label: "shell".into(),
            kind: "probe",
            device: "cpu".into(),
            strategy: None,
            args: vec![Arg::Plain("-c".into()), Arg::Plain(script.into())],
            json: None,
            run_folder: None,
        };
        run(Path::new("/bin/sh"), out.path(), &planned, timeout).unwrap()
    }

    #[cfg(unix)]
    #[test]
    fn how_a_process_ends_is_told_apart() {
        let long = Duration::from_secs(60);
        let ok = shell("echo fine", long);
        assert_eq!(
            (ok.status, ok.exit_code, ok.signal, ok.error),
            (PartStatus::Ok, Some(0), None, None)
        );

        let failed = shell("echo first; echo 'it broke' >&2; exit 3", long);
        assert_eq!(
            (failed.status, failed.exit_code),
            (PartStatus::Failed, Some(3))
        );
        assert_eq!(failed.describe_status(), "failed (exit 3)");
        assert_eq!(failed.error.as_deref(), Some("first\nit broke"));

        let crashed = shell("kill -SEGV $$", long);
        assert_eq!(
            (crashed.status, crashed.signal, crashed.exit_code),
            (PartStatus::Crashed, Some(11), None)
        );
        assert_eq!(crashed.describe_status(), "crashed (signal 11)");

        let slow = shell("sleep 30", Duration::from_millis(200));
        assert_eq!(slow.status, PartStatus::TimedOut);
        assert!(slow.seconds < 20.0, "{}", slow.seconds);
    }

    #[test]
    fn a_missing_program_is_not_started_and_missing_figures_are_bad_output() {
        let out = tempfile::tempdir().unwrap();
        let mut planned = PlannedPart {
            label: "p".into(),
            kind: "probe",
            device: "cpu".into(),
            strategy: None,
            args: vec![],
            json: Some("parts/p.json".into()),
            run_folder: None,
        };
        let missing = run(
            Path::new("/no/such/program"),
            out.path(),
            &planned,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(missing.status, PartStatus::NotStarted);
        assert!(missing
            .error
            .unwrap()
            .contains("cannot start /no/such/program"));

        #[cfg(unix)]
        {
            planned.args = vec![Arg::Plain("-c".into()), Arg::Plain("true".into())];
            let silent = run(
                Path::new("/bin/sh"),
                out.path(),
                &planned,
                Duration::from_secs(5),
            )
            .unwrap();
            assert_eq!(
                (silent.status, silent.exit_code),
                (PartStatus::BadOutput, Some(0))
            );
            assert!(silent
                .error
                .unwrap()
                .contains("parts/p.json was not written"));
        }
    }

    #[test]
    fn an_earlier_reports_files_are_cleared_and_nothing_else() {
        let out = tempfile::tempdir().unwrap();
        let at = |rel: &str| out.path().join(rel);
        for dir in [
            "parts",
            "logs",
            "runs/train-cpu-recompile",
            "runs/train-kept",
            "runs/mine",
        ] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        for file in [
            "report.json",
            "report.md",
            "notes.txt",
            "parts/probe-ane.json",
            "logs/probe-ane.log",
            "runs/train-cpu-recompile/metrics.jsonl",
            "runs/train-cpu-recompile/report.json",
            "runs/train-cpu-recompile/ckpt-00000010.bin",
            "runs/train-kept/metrics.jsonl",
            "runs/train-kept/mine.txt",
            "runs/mine/metrics.jsonl",
        ] {
            std::fs::write(at(file), "x").unwrap();
        }
        clear_earlier(out.path());
        for gone in [
            "report.json",
            "report.md",
            "parts/probe-ane.json",
            "logs/probe-ane.log",
            "runs/train-cpu-recompile",
            "runs/train-kept/metrics.jsonl",
        ] {
            assert!(!at(gone).exists(), "{gone}");
        }
        for kept in [
            "notes.txt",
            "runs/train-kept/mine.txt",
            "runs/mine/metrics.jsonl",
        ] {
            assert!(at(kept).exists(), "{kept}");
        }
    }
}

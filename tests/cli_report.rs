//! `anetrain report` and `anetrain parity` end to end, with the built binary.

mod common;

use anetrain::cli::report::{FieldReport, PartStatus, TrainSummary, FORMAT, FORMAT_VERSION};
use common::*;

/// One quick report, in which one part is made to fail: a folder stands where its run writes
/// `metrics.jsonl`. Everything else must still run and be written down, and nothing an earlier
/// report left may pass for this one's.
#[test]
fn a_report_runs_every_part_writes_both_files_and_names_the_part_that_failed() {
    let dir = Dir::new();
    let out = dir.s("report");
    std::fs::create_dir_all(dir.path("report/runs/train-cpu-dynamic/metrics.jsonl")).unwrap();
    // Figures of an earlier run in the failing part's folder, and an earlier report.
    dir.write(
        "report/runs/train-cpu-dynamic/report.json",
        r#"{"steps": 4, "compiles": 6}"#,
    );
    dir.write("report/report.md", "an earlier report");
    std::fs::create_dir_all(dir.path("report/parts")).unwrap();
    dir.write("report/parts/probe-ane.json", r#"{"command": "probe"}"#);

    let run = anetrain(&["report", "--quick", "--steps", "4", "--out", &out]);
    assert!(!run.status.success(), "a failed part fails the report");
    let err = stderr(&run);
    assert!(
        err.contains("parts did not succeed (") && err.contains("train-cpu-dynamic"),
        "{err}"
    );
    if !cfg!(target_vendor = "apple") {
        assert!(
            err.contains("1 of 11 parts did not succeed (train-cpu-dynamic)"),
            "{err}"
        );
    }

    let json = std::fs::read_to_string(dir.path("report/report.json")).unwrap();
    let report: FieldReport = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (report.format.as_str(), report.version),
        (FORMAT, FORMAT_VERSION)
    );
    assert_eq!(report.machine.os, std::env::consts::OS);
    assert!(report.machine.cores >= 1);
    assert_eq!(report.settings.steps, 4);
    if !cfg!(target_vendor = "apple") {
        assert_eq!(report.settings.simulate, "m4");
        assert!(!report.ane.available);
        let reason = report.ane.reason.as_deref().unwrap();
        assert!(reason.contains("Apple Silicon Mac"), "{reason}");
    }
    assert!(!dir.path("report/parts/probe-ane.json").exists() || report.ane.available);

    // The parts, in order: parity, probe and peak per device, a run per strategy per device.
    let ane = report.ane.available;
    let sim = format!("sim-{}", report.settings.simulate);
    let devices: Vec<&str> = [ane.then_some("ane"), Some("cpu"), Some(sim.as_str())]
        .into_iter()
        .flatten()
        .collect();
    let mut want = vec![format!("parity-{}", if ane { "ane" } else { "cpu" })];
    for d in &devices {
        want.extend([format!("probe-{d}"), format!("peak-{d}")]);
    }
    for d in &devices {
        for s in ["recompile", "double-buffer", "dynamic"] {
            want.push(format!("train-{d}-{s}"));
        }
    }
    let labels: Vec<&str> = report.parts.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, want);
    let part = |label: &str| report.parts.iter().find(|p| p.label == label).unwrap();
    for part in &report.parts {
        assert!(
            dir.path(&format!("report/{}", part.log)).is_file(),
            "{}",
            part.log
        );
        if part.label == "train-cpu-dynamic" {
            assert_eq!((part.status, part.exit_code), (PartStatus::Failed, Some(1)));
            let error = part.error.as_deref().unwrap();
            assert!(error.contains("metrics.jsonl"), "{error}");
            assert!(
                part.result.is_none(),
                "the earlier run's figures were taken"
            );
            assert!(!dir
                .path("report/runs/train-cpu-dynamic/report.json")
                .exists());
        } else if part.device == "ane" {
            // Whatever the ANE does, it is written down.
            assert!(
                part.status == PartStatus::Ok || part.error.is_some(),
                "{part:?}"
            );
        } else {
            assert_eq!(part.status, PartStatus::Ok, "{part:?}");
            assert!(part.result.is_some(), "{}", part.label);
        }
    }

    // Parity: every case passed on the CPU device in both modes.
    let parity = report.parts[0].result.as_ref().unwrap();
    let results = parity["results"].as_array().unwrap();
    let cases = anetrain_device::parity::cases().unwrap();
    let on_cpu: Vec<&serde_json::Value> = results
        .iter()
        .filter(|r| r["target"].as_str().unwrap().starts_with("cpu-"))
        .collect();
    assert_eq!(on_cpu.len(), 2 * cases.len());
    assert!(on_cpu.iter().all(|r| r["outcome"] == "pass"), "{parity}");

    // The probe and the peak: the CPU on the real clock, the chip on a virtual one; the
    // simulated chip's compile costs about 130 evals, as its latency model says.
    let probe_cpu = part("probe-cpu").result.as_ref().unwrap();
    let probe_sim = part(&format!("probe-{sim}")).result.as_ref().unwrap();
    assert_eq!(
        (probe_cpu["clock"].as_str(), probe_sim["clock"].as_str()),
        (Some("real"), Some("virtual"))
    );
    assert_eq!(
        probe_cpu["eval_throughput"]["evals"]["value"], 100,
        "--quick"
    );
    let ratio = probe_sim["summary"]["compile_to_eval"]["value"]
        .as_f64()
        .unwrap();
    assert!((100.0..200.0).contains(&ratio), "{ratio}");
    let peak_cpu = part("peak-cpu").result.as_ref().unwrap();
    let peak_rows = peak_cpu["rows"].as_array().unwrap();
    assert_eq!(peak_rows.len(), 1, "--quick: one row");

    // Training: each run made its steps; recompile and dynamic are not stale, the double
    // buffer is.
    let summary = |label: &str| -> TrainSummary {
        serde_json::from_value(part(label).result.clone().unwrap()).unwrap()
    };
    let trained = [
        "train-cpu-recompile".to_string(),
        "train-cpu-double-buffer".into(),
        format!("train-{sim}-recompile"),
        format!("train-{sim}-double-buffer"),
        format!("train-{sim}-dynamic"),
    ];
    for label in &trained {
        let label = label.as_str();
        let s = summary(label);
        assert_eq!(s.steps, 4, "{label}");
        assert!(
            s.first_loss.is_finite() && s.val_loss.unwrap().is_finite(),
            "{label}"
        );
        let efficiency = s.efficiency.as_ref().unwrap();
        assert_eq!(efficiency["steps"], 4, "{label}");
        let stale = label.ends_with("double-buffer");
        assert_eq!(s.max_staleness > 0, stale, "{label}: {s:?}");
        // Of the run folder only metrics, plot and reports remain.
        let folder = dir.path(&format!("report/runs/{label}"));
        let mut files: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["loss.svg", "metrics.jsonl", "report.json", "report.txt"],
            "{label}"
        );
    }
    let recompile = summary("train-cpu-recompile");
    let efficiency = recompile.efficiency.as_ref().unwrap();
    assert_eq!(efficiency["weights"], "recompile");
    assert_eq!(efficiency["precision"], "fp32");
    let simulated = summary(&format!("train-{sim}-recompile"));
    let sim_efficiency = simulated.efficiency.as_ref().unwrap();
    assert_eq!(sim_efficiency["precision"], "fp16");
    assert_eq!(sim_efficiency["simulated"], true);
    // One set per step and one at the start, on both devices.
    assert_eq!(efficiency["compiles"], sim_efficiency["compiles"]);

    // The Markdown shows the same figures.
    let md = std::fs::read_to_string(dir.path("report/report.md")).unwrap();
    for case in &cases {
        let row = format!("| {} | pass (", case.name);
        assert!(md.contains(&row), "{}", case.name);
    }
    let value = |v: &serde_json::Value| v["value"].as_f64().unwrap();
    let rows = [
        format!(
            "| cpu | recompile | ok | {:.1} | {:.0} | {:.4} | {:.4} | {:.4} | {:.1} | {:.2} | {} |",
            recompile.median_ms_per_step,
            recompile.median_tokens_per_s,
            recompile.first_loss,
            recompile.final_loss,
            recompile.val_loss.unwrap(),
            recompile.stall_ms,
            recompile.mean_staleness,
            efficiency["compiles"]
        ),
        format!(
            "| cpu | real | {:.4} | {:.4} | {:.1} |",
            value(&probe_cpu["summary"]["compile"]),
            value(&probe_cpu["summary"]["eval"]),
            value(&probe_cpu["summary"]["compile_to_eval"])
        ),
        format!(
            "| cpu | real | {} | {:.4} | {:.1} |",
            peak_rows[0]["config"].as_str().unwrap(),
            value(&peak_rows[0]["throughput"]),
            value(&peak_rows[0]["percent_of_peak"])
        ),
    ];
    for row in rows {
        assert!(md.contains(&row), "no `{row}` in\n{md}");
    }
    assert!(!md.contains("an earlier report"));
    assert!(md.contains("| cpu | dynamic | failed (exit 1) |"), "{md}");
    assert!(md.contains("### What went wrong"), "{md}");
    if !cfg!(target_vendor = "apple") {
        assert!(
            md.contains("| ANE | unavailable: the ANE needs an Apple Silicon Mac"),
            "{md}"
        );
    }
}

#[test]
fn a_report_refuses_a_chip_it_cannot_simulate_before_running_anything() {
    let dir = Dir::new();
    let out = dir.s("report");
    let run = anetrain(&["report", "--quick", "--simulate", "m9", "--out", &out]);
    assert!(!run.status.success());
    assert!(
        stderr(&run)
            .contains("--simulate: no latency model of `m9` (there are m1, m2, m3, m4, m5)"),
        "{}",
        stderr(&run)
    );
    assert!(!dir.path("report").exists());
}

#[test]
fn parity_runs_every_case_and_writes_its_json() {
    let dir = Dir::new();
    let json = dir.s("parity.json");
    let run = anetrain(&["parity", "--json", &json]);
    ok(&run);
    let cases = anetrain_device::parity::cases().unwrap();
    let text = stdout(&run);
    assert!(
        text.contains(&format!(
            "parity: {n} passed, 0 failed, 0 errors, 0 skipped, of {n} results",
            n = 2 * cases.len()
        )),
        "{text}"
    );
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("parity.json")).unwrap()).unwrap();
    let first = &value["results"][0];
    assert_eq!(first["case"], cases[0].name.as_str());
    assert_eq!(first["target"], "cpu-fp32");
    assert_eq!(first["against"], "f64 reference");
    let share = first["worst"]["share_of_tolerance"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{share}");
}

#[cfg(not(target_vendor = "apple"))]
#[test]
fn parity_on_a_missing_ane_fails_with_the_reason() {
    let run = anetrain(&["parity", "--device", "ane"]);
    assert!(!run.status.success());
    assert!(
        stderr(&run)
            .contains("--device ane: device unavailable: the ANE needs an Apple Silicon Mac"),
        "{}",
        stderr(&run)
    );
}

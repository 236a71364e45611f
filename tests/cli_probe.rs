//! `anetrain probe` and `anetrain peak` end to end: the binary on the CPU device at small
//! sizes, on the simulated M4, and failing cleanly.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// Probe sizes that finish in a moment on any machine.
const SMALL_PROBE: [&str; 14] = [
    "--channels",
    "16",
    "--spatial",
    "16",
    "--warmup",
    "2",
    "--evals",
    "40",
    "--pairs",
    "20",
    "--compiles",
    "4",
    "--max-loaded",
    "6",
];

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("the JSON file exists")).expect("valid JSON")
}

/// Every number in the file is the `value` of a figure that names its unit.
fn assert_units(json: &Value) {
    match json {
        Value::Number(n) => panic!("number {n} without a unit"),
        Value::Array(items) => items.iter().for_each(assert_units),
        Value::Object(map) if map.contains_key("value") => {
            assert!(
                map["unit"].as_str().is_some_and(|u| !u.is_empty()),
                "{json}"
            )
        }
        Value::Object(map) => map.values().for_each(assert_units),
        _ => {}
    }
}

#[test]
fn probe_runs_on_the_cpu_and_writes_every_figure_with_its_unit() {
    let dir = Dir::new();
    let json = dir.s("probe.json");
    let mut args = vec!["probe", "--json", &json];
    args.extend(SMALL_PROBE);
    let out = anetrain(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for heading in [
        "1. Pure eval",
        "2. Ping-pong",
        "3. Sequential",
        "4. Background",
        "Summary",
    ] {
        assert!(table.contains(heading), "{heading} missing from\n{table}");
    }
    assert!(!table.contains("SIMULATED"), "{table}");
    let json = read_json(&dir.path("probe.json"));
    assert_units(&json);
    assert_eq!(json["command"], "probe");
    assert_eq!(json["clock"], "real");
    assert_eq!(json["simulated"], false);
    assert_eq!(json["sequential_compile"]["compiles"]["value"], 4);
    assert_eq!(json["summary"]["compile"]["unit"], "ms");
}

#[test]
fn probe_simulates_the_m4_and_says_so() {
    let dir = Dir::new();
    let json = dir.s("probe.json");
    let mut args = vec!["probe", "--simulate", "m4", "--json", &json];
    args.extend(SMALL_PROBE);
    let out = anetrain(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("SIMULATED"), "{}", stdout(&out));
    let json = read_json(&dir.path("probe.json"));
    assert_eq!(json["simulated"], true);
    assert_eq!(json["clock"], "virtual");
    assert_eq!(json["background_overlap"]["verdict"], "overlapped");
    // 187 µs + 2·16·16·16 FLOP at 1 TFLOPS (8 ns).
    assert_eq!(json["summary"]["eval"]["value"], 0.187008);
}

#[test]
fn a_failing_probe_exits_non_zero_and_writes_no_json() {
    for fault in [["--fail-compile", "3"], ["--fail-eval", "5"]] {
        let dir = Dir::new();
        let json = dir.s("probe.json");
        let mut args = vec!["probe", "--json", &json, fault[0], fault[1]];
        args.extend(SMALL_PROBE);
        let out = anetrain(&args);
        assert!(!out.status.success(), "{fault:?} should fail");
        assert!(stderr(&out).contains("injected fault"), "{}", stderr(&out));
        assert!(dir.is_empty(), "{fault:?} left a file behind");
    }
}

/// `probe` and `peak` open the ANE as every command does: off a Mac they fail with the
/// reason (they once refused the ANE even on a Mac, as a build without an ANE device).
#[cfg(not(target_vendor = "apple"))]
#[test]
fn probe_and_peak_on_the_ane_off_a_mac_give_the_reason() {
    let dir = Dir::new();
    let json = dir.s("out.json");
    for command in ["probe", "peak"] {
        let out = anetrain(&[command, "--device", "ane", "--json", &json]);
        assert!(!out.status.success(), "{command} should fail");
        let err = stderr(&out);
        assert!(
            err.contains("device unavailable: the ANE needs an Apple Silicon Mac"),
            "{command}: {err}"
        );
        assert!(dir.is_empty());
    }
}

#[test]
fn an_unknown_device_or_chip_is_an_error() {
    let dir = Dir::new();
    let json = dir.s("out.json");
    for (args, message) in [
        (vec!["peak", "--device", "gpu"], "unknown device `gpu`"),
        (vec!["probe", "--simulate", "m9"], "unknown chip"),
        (
            vec!["peak", "--device", "ane", "--simulate", "m4"],
            "--simulate",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--json", &json]);
        let out = anetrain(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(dir.is_empty());
    }
}

#[test]
fn peak_runs_given_rows_on_the_cpu() {
    let dir = Dir::new();
    let json = dir.s("peak.json");
    let out = anetrain(&[
        "peak",
        "--row",
        "4x16sp8",
        "--row",
        "2x32sp16",
        "--depth-divisor",
        "1",
        "--reps",
        "3",
        "--fma-ms",
        "20",
        "--json",
        &json,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("4x conv 16ch sp8"), "{table}");
    assert!(table.contains("measured on the spot"), "{table}");
    assert!(!table.contains("SCALED DOWN"), "{table}");
    let json = read_json(&dir.path("peak.json"));
    assert_units(&json);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // 2 · 16 · 16 · 8 · 4 FLOP.
    assert_eq!(rows[0]["work"]["value"], 16384.0 / 1e9);
    assert_eq!(json["peak"]["source"], "measured");
    assert!(rows[0]["percent_of_peak"]["value"].as_f64().unwrap() > 0.0);
}

#[test]
fn peak_scales_chains_down_on_the_cpu_by_default_and_says_so() {
    let out = anetrain(&["peak", "--row", "16x16sp8", "--reps", "2", "--fma-ms", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("SCALED DOWN: chains are 1/8"), "{table}");
    assert!(table.contains("2x conv 16ch sp8"), "{table}");
}

#[test]
fn a_failing_peak_exits_non_zero_and_writes_no_json() {
    let dir = Dir::new();
    let json = dir.s("peak.json");
    let out = anetrain(&[
        "peak",
        "--row",
        "2x16sp8",
        "--fail-eval",
        "4",
        "--fma-ms",
        "20",
        "--json",
        &json,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("peak sweep failed"),
        "{}",
        stderr(&out)
    );
    assert!(dir.is_empty());
}

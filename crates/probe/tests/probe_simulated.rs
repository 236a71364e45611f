//! The probe against the M4 latency model in virtual time: every figure is known exactly.

mod common;

use anetrain_device::decorate::ChipProfile;
use anetrain_probe::probe::DriftVerdict;
use anetrain_probe::report::{probe_table, probe_to_json};
use anetrain_probe::{run_probe, OverlapVerdict, ProbeConfig, ProbeReport};
use common::*;
use std::sync::OnceLock;
use std::time::Duration;

/// The original's sizes: a 1×1 conv 128→128 at spatial 64.
const FLOPS: u64 = 2 * 128 * 128 * 64;
const WEIGHTS: u64 = 128 * 128;

/// The default probe, run once and shared by the tests below.
fn report() -> &'static ProbeReport {
    static REPORT: OnceLock<ProbeReport> = OnceLock::new();
    REPORT.get_or_init(|| {
        let bed = simulated_testbed(|m4| m4);
        run_probe(&bed, &ProbeConfig::default()).expect("the simulated probe passes")
    })
}

fn eval_time() -> Duration {
    ChipProfile::m4().eval_time(FLOPS)
}

fn compile_time() -> Duration {
    ChipProfile::m4().compile_time(WEIGHTS)
}

#[test]
fn the_profile_gives_the_m4_figures() {
    // 187 µs + 2.097 MFLOP at 1 TFLOPS; 24.8 ms + 5.7 ms/MB × 0.032768 MB.
    assert_eq!(eval_time(), Duration::from_nanos(189_097));
    let compile = compile_time().as_nanos();
    assert!((24_986_777..=24_986_778).contains(&compile), "{compile}");
}

#[test]
fn eval_throughput_is_the_profiles_eval_time() {
    let t1 = &report().eval_throughput;
    assert_eq!(t1.evals, 1000);
    assert_eq!(t1.per_eval, eval_time());
    assert_eq!(t1.total, eval_time() * 1000);
    assert_eq!(
        (t1.spread.min, t1.spread.median, t1.spread.max),
        (eval_time(), eval_time(), eval_time())
    );
    let gflops = t1.flops_per_second / 1e9;
    assert!((gflops - FLOPS as f64 / 189_097.0).abs() < 1e-9, "{gflops}");
}

#[test]
fn ping_pong_has_no_overhead() {
    let t2 = &report().ping_pong;
    assert_eq!(t2.pairs, 500);
    assert_eq!(t2.overhead_percent, 0.0);
    assert_eq!(t2.per_pair, eval_time() * 2);
    assert_eq!(t2.per_eval, eval_time());
}

#[test]
fn sequential_compiles_take_the_profiles_compile_time_without_drift() {
    let t3 = &report().sequential_compile;
    assert_eq!(t3.times, vec![compile_time(); 20]);
    assert_eq!(t3.spread.median, compile_time());
    assert_eq!(t3.drift_window, 5);
    assert_eq!(t3.drift_ratio, 1.0);
    assert_eq!(t3.drift, DriftVerdict::None);
}

#[test]
fn the_background_compile_overlaps_exactly_floor_compile_over_eval_evals() {
    let t4 = &report().background_overlap;
    assert_eq!(t4.compile(), compile_time());
    // floor(24.986778 ms / 0.189097 ms) = floor(132.13) = 132.
    let fit = (compile_time().as_nanos() / eval_time().as_nanos()) as usize;
    assert_eq!(fit, 132);
    assert_eq!(t4.evals_inside, fit);
    // The foreground ran until the compile had finished, so one more eval straddles its end
    // (and more if the host ran the background thread late: those lie after the window).
    assert!(t4.foreground_evals > fit, "{}", t4.foreground_evals);
    assert_eq!(t4.latency_ratio, 1.0);
    assert_eq!(t4.verdict, OverlapVerdict::Overlapped);
}

#[test]
fn the_summary_follows_from_the_tests() {
    let r = report();
    assert!(r.simulated && r.clock_simulated);
    assert_eq!(r.compile_time(), compile_time());
    assert_eq!(r.eval_time(), eval_time());
    let ratio = compile_time().as_secs_f64() / eval_time().as_secs_f64();
    assert!((r.compile_to_eval() - ratio).abs() < 1e-9);
    assert_eq!(r.loaded_at_once.loaded, 64);
    assert_eq!(r.loaded_at_once.stopped_by, None);
    // 1 + 1 + 20 + 1 + 64.
    assert_eq!(r.compiles_attempted, 87);
    let table = probe_table(r);
    assert!(table.contains("SIMULATED"), "{table}");
    assert!(table.contains("yes (the foreground kept 100%"), "{table}");
}

#[test]
fn the_json_gives_every_figure_a_unit() {
    let json = probe_to_json(report());
    assert_every_number_has_a_unit(&json);
    assert_eq!(json["simulated"], true);
    assert_eq!(json["clock"], "virtual");
    assert_eq!(json["summary"]["eval"]["unit"], "ms");
    assert_eq!(figure(&json, &["summary", "eval"]), 0.189097);
    assert_eq!(
        figure(
            &json,
            &["background_overlap", "foreground_evals_inside_compile"]
        ),
        132.0
    );
    assert_eq!(json["background_overlap"]["verdict"], "overlapped");
    assert_eq!(json["sequential_compile"]["drift"]["verdict"], "none");
    assert_eq!(
        figure(&json, &["ping_pong", "overhead_vs_eval_throughput"]),
        0.0
    );
    assert_eq!(
        json["ping_pong"]["overhead_vs_eval_throughput"]["unit"],
        "%"
    );
}

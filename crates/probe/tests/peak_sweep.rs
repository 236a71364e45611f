//! The peak sweep: FLOP counting by hand, exact times against the latency model, and failures.

mod common;

use anetrain_device::clock::RealClock;
use anetrain_device::decorate::{ChipProfile, FaultInjection};
use anetrain_device::{CpuDevice, NumericMode, PeakFlops};
use anetrain_mil::check::check_program;
use anetrain_mil::cost;
use anetrain_probe::peak::ORIGINAL_ROWS;
use anetrain_probe::report::peak_to_json;
use anetrain_probe::{run_peak, run_probe, ChainShape, PeakConfig, ProbeError, Testbed};
use common::*;
use std::sync::Arc;

#[test]
fn gflop_and_weights_of_the_original_rows_match_the_hand_computed_values() {
    // 2 · 512 · 512 · 64 · 96 = 3 221 225 472 FLOP; 512² · 2 bytes · 96 = 48 MiB.
    let row = ChainShape::new(96, 512, 64);
    assert_eq!(ORIGINAL_ROWS[0], row);
    assert_eq!(row.flops(), 3_221_225_472);
    assert_eq!(row.gflop(), 3.221225472);
    assert_eq!(row.weight_mib(), 48.0);
    // 2 · 256 · 256 · 64 · 256 = 2 147 483 648 FLOP.
    assert_eq!(ORIGINAL_ROWS[2].gflop(), 2.147483648);
}

#[test]
fn the_flop_count_agrees_with_the_mil_cost_model() {
    let row = ChainShape::new(6, 32, 16);
    let program = row.chain().program();
    let checked = check_program(&program).unwrap();
    let main = program.main().unwrap();
    assert_eq!(cost::flops(main, &checked), row.flops());
    assert_eq!(cost::weight_bytes(main), 6 * 32 * 32 * 2);
}

fn config(rows: Vec<ChainShape>, depth_divisor: usize, peak: PeakFlops) -> PeakConfig {
    PeakConfig {
        rows,
        depth_divisor,
        warmup_evals: 2,
        timed_evals: 5,
        peak,
    }
}

#[test]
fn simulated_rows_take_exactly_the_profiles_times() {
    let bed = simulated_testbed(|m4| m4);
    let rows = vec![ChainShape::new(8, 32, 16), ChainShape::new(4, 64, 32)];
    let mut seen = Vec::new();
    let report = run_peak(
        &bed,
        &config(rows.clone(), 2, PeakFlops::Rated(2e12)),
        &mut |row| seen.push(row.shape),
    )
    .unwrap();
    let profile = ChipProfile::m4();
    assert_eq!(
        seen,
        vec![ChainShape::new(4, 32, 16), ChainShape::new(2, 64, 32)]
    );
    for (row, nominal) in report.rows.iter().zip(&rows) {
        assert_eq!(row.nominal, *nominal);
        let flops = 2 * row.shape.channels.pow(2) * row.shape.spatial * row.shape.depth;
        assert_eq!(row.shape.flops(), flops as u64);
        let eval = profile.eval_time(flops as u64);
        assert_eq!(
            (row.eval.min, row.eval.median, row.eval.max),
            (eval, eval, eval)
        );
        let weights = row.shape.channels.pow(2) * row.shape.depth;
        assert_eq!(row.compile, profile.compile_time(weights as u64));
        let flops_per_second = flops as f64 / eval.as_secs_f64();
        assert_eq!(row.flops_per_second, flops_per_second);
        assert_eq!(row.percent_of_peak, Some(100.0 * flops_per_second / 2e12));
    }
    assert!(report.simulated && report.clock_simulated);
}

#[test]
fn the_json_gives_every_figure_a_unit() {
    let bed = simulated_testbed(|m4| m4);
    let report = run_peak(
        &bed,
        &config(vec![ChainShape::new(3, 16, 8)], 1, PeakFlops::Unknown),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.rows[0].percent_of_peak, None);
    let json = peak_to_json(&report);
    assert_every_number_has_a_unit(&json);
    assert_eq!(json["simulated"], true);
    assert_eq!(
        figure(&json["rows"][0], &["work"]),
        2.0 * 16.0 * 16.0 * 8.0 * 3.0 / 1e9
    );
    assert_eq!(json["rows"][0]["work"]["unit"], "GFLOP");
    assert_eq!(json["rows"][0]["throughput"]["unit"], "TFLOP/s");
    assert!(json["rows"][0]["percent_of_peak"].is_null());
}

#[test]
fn failures_end_the_sweep() {
    let rows = vec![ChainShape::new(2, 16, 8), ChainShape::new(2, 32, 8)];
    let cases: Vec<(Testbed, &str)> = vec![
        (
            simulated_testbed(|m4| FaultInjection::new(m4).fail_compile(2)),
            "compil",
        ),
        (
            simulated_testbed(|m4| FaultInjection::new(m4).fail_eval(3)),
            "evaluat",
        ),
        (
            simulated_testbed(|m4| CorruptEval::new(m4, Spoil::Eval(7))),
            "wrong result",
        ),
    ];
    for (bed, what) in cases {
        let result = run_peak(
            &bed,
            &config(rows.clone(), 1, PeakFlops::Unknown),
            &mut |_| {},
        );
        match result {
            Err(e) => assert!(e.to_string().contains(what), "{e}"),
            Ok(_) => panic!("expected a failure ({what})"),
        }
    }
    let bed = simulated_testbed(|m4| m4);
    assert!(matches!(
        run_peak(&bed, &config(vec![], 1, PeakFlops::Unknown), &mut |_| {}),
        Err(ProbeError::Settings { .. })
    ));
    // A row beyond the machine's memory is refused before any row runs, saying what it
    // needs: 2^20 channels, 2^10 deep, 6 bytes a weight is 6 PiB.
    if anetrain_device::memory::physical_memory().is_some() {
        let huge = vec![ChainShape::new(1 << 10, 1 << 20, 16)];
        let mut ran = 0;
        let err = run_peak(&bed, &config(huge, 1, PeakFlops::Unknown), &mut |_| {
            ran += 1
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("row 1024x conv 1048576ch sp16 needs at least 6291456.1 GiB"),
            "{err}"
        );
        assert_eq!(ran, 0);
    }
}

#[test]
fn the_kernels_are_exact_in_the_ane_like_fp16_mode() {
    // Rounded to fp16 at every op boundary, as on the ANE: the probe's kernels and a deep
    // chain still verify (their values are exact in fp16). Real clock; nothing timed is checked.
    let cpu = CpuDevice::new(NumericMode::Fp16).with_threads(1);
    let bed = Testbed::new(Arc::new(cpu), Arc::new(RealClock::new()));
    run_probe(&bed, &small_config()).expect("the probe verifies in fp16");
    let rows = vec![ChainShape::new(64, 64, 16)];
    run_peak(&bed, &config(rows, 1, PeakFlops::Unknown), &mut |_| {})
        .expect("a 64-deep chain verifies in fp16");
}

//! Kernel parity: each case of `anetrain_device::parity` runs on every device present.
//!
//! * the CPU device in fp32 and in fp16 mode, always, each against a naive f64 reference;
//! * the ANE, when `AneDevice::open()` succeeds, against the CPU device's fp16 result (the
//!   mode that rounds like the ANE). Elsewhere the ANE half reports itself skipped, by name,
//!   on stderr (`parity[ane] <case>: skipped: <reason>`); set `ANETRAIN_REQUIRE_ANE=1` to make
//!   a missing ANE fail the suite instead, on a Mac where it should be there.

mod common;

use anetrain_device::decorate::FaultInjection;
use anetrain_device::parity::{
    cases, eval_once, run_case, run_suite, Case, CaseResult, Deviation, Outcome, Target, Tolerance,
};
use anetrain_device::{AneConfig, AneDevice, CpuDevice, Device, DeviceError, NumericMode};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::examples;
use common::{assert_close, Rng};
use std::io::Write;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// The devices.

/// The ANE of this machine, opened once for the whole suite, or why there is none.
fn ane() -> Result<&'static AneDevice, &'static str> {
    static ANE: OnceLock<Result<AneDevice, String>> = OnceLock::new();
    let opened = ANE.get_or_init(|| AneDevice::open().map_err(|e| e.to_string()));
    match opened {
        Ok(device) => Ok(device),
        Err(reason) if std::env::var_os("ANETRAIN_REQUIRE_ANE").is_some() => {
            panic!("ANETRAIN_REQUIRE_ANE is set, but the ANE is unavailable: {reason}")
        }
        Err(reason) => Err(reason),
    }
}

/// Says that the ANE half of a case did not run, on stderr as the test runs: written to the
/// stream directly, since the harness captures only `eprintln!`.
fn skipped(case: &str, reason: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "parity[ane] {case}: skipped: {reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// The suite.

#[test]
fn every_case_passes_on_the_cpu_device_and_on_the_ane() {
    let ane = ane();
    let target = ane.ok().map(|device| Target {
        name: "ane".into(),
        device,
        rules: Some(device.ane_info().rules()),
    });
    let results = run_suite(target.as_ref(), &mut |r| {
        if matches!(r.outcome, Outcome::Skipped(_)) {
            let _ = writeln!(std::io::stderr().lock(), "{r}");
        }
    })
    .expect("the suite's programs type-check");
    let names: Vec<String> = cases().unwrap().into_iter().map(|c| c.name).collect();
    if let Err(reason) = ane {
        for name in &names {
            skipped(name, reason);
        }
    }
    let failures: Vec<String> = results
        .iter()
        .filter(|r| r.outcome.is_failure())
        .map(CaseResult::to_string)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every case ran on the CPU device in both modes.
    for target in ["cpu-fp32", "cpu-fp16"] {
        let passed: Vec<&str> = results
            .iter()
            .filter(|r| r.target == target && r.outcome.passed())
            .map(|r| r.case.as_str())
            .collect();
        assert_eq!(passed, names, "{target}");
    }
    assert!(names.len() >= 15, "{names:?}");
}

/// The first case of the suite with this name.
fn case_named(name: &str) -> Case {
    cases()
        .unwrap()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

#[test]
fn a_reference_that_disagrees_fails_the_case_at_its_worst_element() {
    let mut case = case_named("spec_example_b");
    let honest = std::mem::replace(&mut case.reference, Box::new(|_| Vec::new()));
    // The reference off by 0.5 at element 7 only.
    case.reference = Box::new(move |x| {
        let mut want = honest(x);
        want[7] += 0.5;
        want
    });
    let results = run_case(&case, None);
    assert_eq!(results.len(), 2);
    for r in &results {
        let Outcome::Failed(d) = &r.outcome else {
            panic!("{r}")
        };
        assert_eq!((d.index, d.beyond, d.len), (7, 1, 128 * 32), "{r}");
        assert!((d.want - d.got - 0.5).abs() < 1e-2, "{r}");
        assert!(r.to_string().contains("fail"), "{r}");
    }
}

#[test]
fn another_device_is_judged_against_the_cpu_fp16_result() {
    let case = case_named("causal attention");
    let judged_by = |device: &dyn Device, tolerance: Option<Tolerance>| {
        let mut case = case_named("causal attention");
        if let Some(t) = tolerance {
            case.tolerances.device = t;
        }
        let target = Target {
            name: "other".into(),
            device,
            rules: None,
        };
        let mut results = run_case(&case, Some(&target));
        assert_eq!(results.len(), 3);
        assert_eq!(results[2].against, "cpu-fp16");
        results.remove(2).outcome
    };
    // The CPU device in fp16 as the other device computes exactly the fp16 result ...
    let fp16 = CpuDevice::new(NumericMode::Fp16);
    let Outcome::Passed(d) = judged_by(&fp16, Some(Tolerance::new(0.0, 0.0))) else {
        panic!("fp16 against itself")
    };
    assert_eq!(d.max_abs_error, 0.0);
    // ... and in fp32 differs from it by fp16's rounding: within the device tolerance, beyond
    // a tighter one.
    let fp32 = CpuDevice::new(NumericMode::Fp32);
    let Outcome::Passed(d) = judged_by(&fp32, None) else {
        panic!("fp32 within the device tolerance")
    };
    assert!(d.max_abs_error > 0.0 && d.max_abs_error < case.tolerances.device.atol);
    assert!(matches!(
        judged_by(&fp32, Some(Tolerance::new(1e-7, 0.0))),
        Outcome::Failed(_)
    ));
}

#[test]
fn a_device_error_or_a_wrong_length_is_an_error_and_nan_is_beyond_every_tolerance() {
    let case = case_named("spec_example_b");
    let failing = FaultInjection::new(CpuDevice::new(NumericMode::Fp16)).fail_eval(1);
    let target = Target {
        name: "failing".into(),
        device: &failing,
        rules: None,
    };
    let results = run_case(&case, Some(&target));
    assert!(
        matches!(results[2].outcome, Outcome::Error(_)),
        "{}",
        results[2]
    );
    assert!(results[2].outcome.is_failure());

    let mut short = case_named("spec_example_b");
    short.reference = Box::new(|_| vec![0.0; 3]);
    for r in run_case(&short, None) {
        let Outcome::Error(why) = &r.outcome else {
            panic!("{r}")
        };
        assert_eq!(why, "4096 output elements where 3 were expected");
    }

    let d = Deviation::measure(&[0.0, f32::NAN], &[0.0, 1.0], Tolerance::new(1.0, 1.0));
    assert_eq!((d.index, d.beyond), (1, 1));
    assert!(d.share_of_tolerance.is_infinite() && d.max_abs_error.is_infinite());
}

// ---------------------------------------------------------------------------------------------
// What only the ANE device does: kernel lifetimes on shared temp directories, request reuse,
// the compile budget.

#[test]
fn ane_identical_kernels_outlive_each_other_and_reuse_their_request() {
    let case = "identical kernels";
    let ane = match ane() {
        Ok(ane) => ane,
        Err(reason) => return skipped(case, reason),
    };
    let (c, s) = (64, 64);
    let program = examples::conv_chain(1, c, s);
    let weights = examples::conv_chain_weights(1, c, 0.5);
    let first = ane.compile(&program, &weights).expect("first compile");
    let mut second = ane.compile(&program, &weights).expect("second compile");
    // Both kernels share one temp directory; freeing one must not break the other.
    drop(first);
    let cpu = CpuDevice::new(NumericMode::Fp16);
    let mut rng = Rng::new(10);
    for round in 0..3 {
        let x = rng.vec(c * s, 1.0);
        let mut got = vec![f32::NAN; c * s];
        ane.eval(&mut second, &[&x], &mut [&mut got])
            .unwrap_or_else(|e| panic!("parity[ane] {case}, eval {round}: {e}"));
        let want = eval_once(&cpu, &program, &weights, &[x]).unwrap();
        let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("parity[ane] {case}, eval {round}"),
            &got,
            &want,
            1e-2,
            1e-2,
        );
    }
}

#[test]
fn ane_compile_budget_is_refused_before_the_compiler() {
    let case = "compile budget";
    if let Err(reason) = ane() {
        return skipped(case, reason);
    }
    // A budget of what the process has already used leaves no compile.
    let used = anetrain_device::ane::process_compiles();
    let device = AneDevice::open_with(AneConfig {
        compile_budget: used,
        ..AneConfig::default()
    })
    .expect("the ANE opened once already");
    let program = examples::dynamic_matmul(64, 64, 32);
    match device.compile(&program, &WeightFiles::new()) {
        Err(DeviceError::BudgetExhausted { budget, .. }) => assert_eq!(budget, used),
        Err(other) => panic!("expected BudgetExhausted, got {other}"),
        Ok(_) => panic!("a compile past the budget was allowed"),
    }
}

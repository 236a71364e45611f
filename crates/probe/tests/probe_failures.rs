//! A failed compile, a failed eval or a wrong result ends the probe with an error that names
//! the stage; running out of room while counting loaded kernels is a result, not a failure.

mod common;

use anetrain_device::decorate::{CompileBudget, FaultInjection};
use anetrain_probe::probe::{
    BACKGROUND_OVERLAP, EVAL_THROUGHPUT, LOADED_AT_ONCE, PING_PONG, SEQUENTIAL_COMPILE,
};
use anetrain_probe::{run_probe, ProbeConfig, ProbeError};
use common::*;

fn probe_with_failing_compile(k: u64) -> Result<anetrain_probe::ProbeReport, ProbeError> {
    let bed = simulated_testbed(|m4| FaultInjection::new(m4).fail_compile(k));
    run_probe(&bed, &small_config())
}

#[test]
fn a_failing_compile_fails_the_test_it_belongs_to() {
    for (k, stage) in [
        (1, EVAL_THROUGHPUT),
        (2, PING_PONG),
        (5, SEQUENTIAL_COMPILE),
        (7, BACKGROUND_OVERLAP),
    ] {
        match probe_with_failing_compile(k) {
            Err(e @ ProbeError::Compile { .. }) => {
                assert_eq!(e.stage(), stage, "compile {k}: {e}");
                assert!(e.to_string().contains("injected fault"), "{e}");
            }
            other => panic!("compile {k}: expected a compile failure, got {other:?}"),
        }
    }
}

#[test]
fn a_failing_compile_while_counting_loaded_kernels_ends_the_count() {
    // Compiles 8.. belong to the count: the 4th of them fails.
    let report = probe_with_failing_compile(11).expect("the probe passes");
    let loaded = &report.loaded_at_once;
    assert_eq!(loaded.loaded, 3);
    let stopped = loaded.stopped_by.as_deref().unwrap_or_default();
    assert!(stopped.contains("injected fault: compile 11"), "{stopped}");
}

#[test]
fn the_compile_budget_is_what_stops_the_count() {
    // Seven compiles before the count, then room for five more.
    let bed = simulated_testbed(|m4| CompileBudget::new(m4, 12));
    let report = run_probe(&bed, &small_config()).expect("the probe passes");
    assert_eq!(report.loaded_at_once.loaded, 5);
    let stopped = report.loaded_at_once.stopped_by.unwrap_or_default();
    assert!(stopped.contains("budget exhausted"), "{stopped}");
}

#[test]
fn a_failing_eval_fails_the_probe() {
    // Eval 1 is test 1's first warm-up eval; 3 + 50 + 3 + 1 falls in the ping-pong loop.
    for (k, stage) in [(1, EVAL_THROUGHPUT), (57, PING_PONG)] {
        let bed = simulated_testbed(|m4| FaultInjection::new(m4).fail_eval(k));
        match run_probe(&bed, &small_config()) {
            Err(e @ ProbeError::Eval { .. }) => assert_eq!(e.stage(), stage, "eval {k}: {e}"),
            other => panic!("eval {k}: expected an eval failure, got {other:?}"),
        }
    }
}

#[test]
fn a_wrong_result_fails_the_probe() {
    // Eval 1: the first warm-up eval; eval 53: the last timed eval of test 1 (3 + 50).
    for k in [1, 53] {
        let bed = simulated_testbed(|m4| CorruptEval::new(m4, Spoil::Eval(k)));
        match run_probe(&bed, &small_config()) {
            Err(e @ ProbeError::WrongResult { .. }) => {
                assert_eq!(e.stage(), EVAL_THROUGHPUT, "eval {k}: {e}");
                assert!(e.to_string().contains("channel 0, position 0"), "{e}");
            }
            other => panic!("eval {k}: expected a wrong result, got {other:?}"),
        }
    }
}

#[test]
fn every_kernel_is_checked() {
    // A kernel that computes the wrong thing fails the stage that compiled it, including the
    // background kernel and the kernels counted as loaded (a wrong one is not "loaded").
    for (k, stage) in [
        (2, PING_PONG),
        (4, SEQUENTIAL_COMPILE),
        (7, BACKGROUND_OVERLAP),
        (8, LOADED_AT_ONCE),
        (15, LOADED_AT_ONCE),
    ] {
        let bed = simulated_testbed(|m4| CorruptEval::new(m4, Spoil::KernelOfCompile(k)));
        match run_probe(&bed, &small_config()) {
            Err(e @ ProbeError::WrongResult { .. }) => {
                assert_eq!(e.stage(), stage, "kernel of compile {k}: {e}")
            }
            other => panic!("kernel of compile {k}: expected a wrong result, got {other:?}"),
        }
    }
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let bed = simulated_testbed(|m4| m4);
    for config in [
        ProbeConfig {
            channels: 7,
            ..small_config()
        },
        ProbeConfig {
            evals: 0,
            ..small_config()
        },
        ProbeConfig {
            compiles: 1,
            ..small_config()
        },
    ] {
        assert!(matches!(
            run_probe(&bed, &config),
            Err(ProbeError::Settings { .. })
        ));
    }
}

//! `anetrain devices` and `--device` end to end, with the built binary.

mod common;

use common::*;

#[test]
fn devices_lists_the_cpu_and_says_whether_there_is_an_ane() {
    let out = anetrain(&["devices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("cpu  CPU (") && lines[0].contains("fp32 and fp16"),
        "{text}"
    );
    let ane = lines
        .iter()
        .find(|l| l.starts_with("ane  "))
        .unwrap_or_else(|| panic!("no ane line in:\n{text}"));
    if cfg!(target_vendor = "apple") {
        assert!(
            ane.starts_with("ane  Apple Neural Engine") || ane.starts_with("ane  unavailable: "),
            "{text}"
        );
    } else {
        assert!(
            ane.starts_with("ane  unavailable: the ANE needs an Apple Silicon Mac"),
            "{text}"
        );
    }
}

/// Off a Mac, asking for the ANE fails with the reason, before any file is written.
#[cfg(not(target_vendor = "apple"))]
#[test]
fn device_ane_off_a_mac_exits_non_zero_with_the_reason() {
    use anetrain_mil::blob::BlobFile;
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("rms_w.bin");
    std::fs::write(&weights, BlobFile::fp16(&vec![1.0; 768]).to_bytes()).unwrap();
    let x = dir.path().join("x.npy");
    let x_values = vec![0.5f32; 768 * 256];
    anetrain::npy::write_atomic(&x, anetrain_mil::DType::Fp16, &[1, 768, 1, 256], &x_values)
        .unwrap();
    let output = dir.path().join("out.npy");
    let out = anetrain(&[
        "mil",
        "run",
        &fixture("example_c.mil"),
        "--weights",
        &format!("@model_path/weights/rms_w.bin={}", weights.display()),
        "--input",
        &format!("x={}", x.display()),
        "--output",
        &output.display().to_string(),
        "--device",
        "ane",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("device unavailable: the ANE needs an Apple Silicon Mac"),
        "{err}"
    );
    assert!(
        !output.exists(),
        "nothing is written when the device is unavailable"
    );

    // The same run on the CPU device succeeds: the failure above is the device's alone.
    let cpu = anetrain(&[
        "mil",
        "run",
        &fixture("example_c.mil"),
        "--weights",
        &format!("@model_path/weights/rms_w.bin={}", weights.display()),
        "--input",
        &format!("x={}", x.display()),
        "--output",
        &output.display().to_string(),
        "--device",
        "cpu",
    ]);
    assert!(cpu.status.success(), "{}", stderr(&cpu));
    assert!(output.exists());
}

#[test]
fn an_unknown_device_is_refused_with_the_choices() {
    let out = anetrain(&[
        "mil", "run", "p.mil", "--output", "o.npy", "--device", "gpu",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("gpu") && err.contains("cpu") && err.contains("ane"),
        "{err}"
    );
}

/// `train --device ane` with `extra` arguments into a fresh folder: it must fail before the
/// run folder is created. Returns what it printed on stderr.
fn refused_ane_train(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run").display().to_string();
    let mut args = vec!["train", "--device", "ane", "--out", &run];
    args.extend_from_slice(extra);
    let out = anetrain(&args);
    assert!(!out.status.success());
    assert!(!dir.path().join("run").exists());
    stderr(&out)
}

/// `train --device ane` opens the ANE like every other command: off a Mac it fails with the
/// reason before the run folder gets anything.
#[cfg(not(target_vendor = "apple"))]
#[test]
fn train_on_the_ane_off_a_mac_exits_non_zero_with_the_reason() {
    let err = refused_ane_train(&["--steps", "2", "--quiet"]);
    assert!(
        err.contains("device unavailable: the ANE needs an Apple Silicon Mac"),
        "{err}"
    );
}

/// The ANE computes in fp16: asking it for fp32 is refused by name, on any machine, before
/// the device is opened.
#[test]
fn train_on_the_ane_refuses_fp32() {
    let err = refused_ane_train(&["--precision", "fp32"]);
    assert!(err.contains("the ANE computes in fp16 only"), "{err}");
}

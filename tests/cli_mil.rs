//! `anetrain mil` end to end: the binary on real files, good and bad.

mod common;

use anetrain::npy;
use anetrain_mil::blob::BlobFile;
use anetrain_mil::DType;
use common::*;

/// Example C on files: x[c, t] = (t + 64)/256 in every channel and w = 1 give
/// out[c, t] = x / sqrt(x² + 1e-5), within fp16 rounding.
#[test]
fn run_evaluates_example_c_from_npy_files() {
    let dir = Dir::new();
    let (d, s) = (768, 256);
    std::fs::write(
        dir.path("rms_w.bin"),
        BlobFile::fp16(&vec![1.0; d]).to_bytes(),
    )
    .unwrap();
    let x: Vec<f32> = (0..d * s).map(|i| ((i % s) + 64) as f32 / 256.0).collect();
    npy::write_atomic(&dir.path("x.npy"), DType::Fp16, &[1, d, 1, s], &x).unwrap();
    let out = anetrain(&[
        "mil",
        "run",
        &fixture("example_c.mil"),
        "--weights",
        &format!("@model_path/weights/rms_w.bin={}", dir.s("rms_w.bin")),
        "--input",
        &format!("x={}", dir.s("x.npy")),
        "--output",
        &dir.s("out.npy"),
        "--precision",
        "fp16",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let y = npy::read(&dir.path("out.npy")).unwrap();
    assert_eq!(y.shape, vec![1, d, 1, s]);
    for (i, &v) in y.data.iter().enumerate() {
        let xv = ((i % s) + 64) as f64 / 256.0;
        let want = xv / (xv * xv + 1e-5).sqrt();
        assert!(
            (v as f64 - want).abs() < 4e-3,
            "out[{i}] = {v}, want {want}"
        );
    }
}

#[test]
fn run_rejects_an_input_of_the_wrong_shape_and_writes_nothing() {
    let dir = Dir::new();
    npy::write_atomic(
        &dir.path("x.npy"),
        DType::Fp32,
        &[1, 64, 1, 16],
        &[0.0; 1024],
    )
    .unwrap();
    std::fs::write(dir.path("w.bin"), BlobFile::fp16(&[0.0; 4096]).to_bytes()).unwrap();
    let out = anetrain(&[
        "mil",
        "run",
        &fixture("example_a.mil"),
        "--weights",
        &format!("@model_path/weights/weight.bin={}", dir.s("w.bin")),
        "--input",
        &format!("x={}", dir.s("x.npy")),
        "--output",
        &dir.s("y.npy"),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("shape [1, 64, 1, 16]") && err.contains("tensor<fp32, [1, 64, 1, 32]>"),
        "{err}"
    );
    assert!(!dir.path("y.npy").exists());
}

#[test]
fn run_names_a_missing_weight_file() {
    let dir = Dir::new();
    npy::write_atomic(
        &dir.path("x.npy"),
        DType::Fp32,
        &[1, 64, 1, 32],
        &[0.0; 2048],
    )
    .unwrap();
    let out = anetrain(&[
        "mil",
        "run",
        &fixture("example_a.mil"),
        "--input",
        &format!("x={}", dir.s("x.npy")),
        "--output",
        &dir.s("y.npy"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("@model_path/weights/weight.bin"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path("y.npy").exists());
}

#[test]
fn run_rejects_a_truncated_npy_and_a_corrupt_weight_file() {
    let dir = Dir::new();
    npy::write_atomic(
        &dir.path("x.npy"),
        DType::Fp32,
        &[1, 64, 1, 32],
        &[0.0; 2048],
    )
    .unwrap();
    let bytes = std::fs::read(dir.path("x.npy")).unwrap();
    std::fs::write(dir.path("cut.npy"), &bytes[..bytes.len() - 10]).unwrap();
    let mut blob = BlobFile::fp16(&[0.0; 4096]).to_bytes();
    blob[64] ^= 0xff; // break the chunk's sentinel
    std::fs::write(dir.path("w.bin"), &blob).unwrap();
    std::fs::write(
        dir.path("good.bin"),
        BlobFile::fp16(&[0.0; 4096]).to_bytes(),
    )
    .unwrap();
    let run = |x: &str, w: &str| {
        anetrain(&[
            "mil",
            "run",
            &fixture("example_a.mil"),
            "--weights",
            &format!("@model_path/weights/weight.bin={}", dir.s(w)),
            "--input",
            &format!("x={}", dir.s(x)),
            "--output",
            &dir.s("y.npy"),
        ])
    };
    let out = run("cut.npy", "good.bin");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cut.npy"), "{}", stderr(&out));
    let out = run("x.npy", "w.bin");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sentinel"), "{}", stderr(&out));
    assert!(!dir.path("y.npy").exists());
}

#[test]
fn check_prints_the_signature_and_fails_with_line_and_column() {
    let out = anetrain(&["mil", "check", &fixture("example_b.mil")]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "(tensor<fp16, [1, 64, 1, 160]> x) -> (tensor<fp16, [1, 128, 1, 32]> mm_y)\n"
    );
    let dir = Dir::new();
    let text = std::fs::read_to_string(fixture("example_b.mil")).unwrap();
    std::fs::write(
        dir.path("bad.mil"),
        text.replacen("mm_act = slice", "mm_act = slise", 1),
    )
    .unwrap();
    let out = anetrain(&["mil", "check", &dir.s("bad.mil")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("slise"), "{}", stderr(&out));
    std::fs::write(dir.path("cut.mil"), &text[..200]).unwrap();
    let out = anetrain(&["mil", "check", &dir.s("cut.mil")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cut.mil:"), "{}", stderr(&out));
}

#[test]
fn fmt_prints_canonical_text() {
    let text = std::fs::read_to_string(fixture("example_a.mil")).unwrap();
    let spaced = text.replace("x=x16", "x = x16").replace("        ", "  ");
    let dir = Dir::new();
    std::fs::write(dir.path("a.mil"), spaced).unwrap();
    let out = anetrain(&["mil", "fmt", &dir.s("a.mil")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
}

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
    // A type error points at the statement, as a syntax error does.
    let bad = text.replacen("mm_act = slice", "mm_act = slise", 1);
    let at = bad.find("mm_act = slise").unwrap();
    let line = bad[..at].matches('\n').count() + 1;
    let statement = bad[..at].rfind('\n').map_or(0, |n| n + 1);
    let column = bad[statement..].find(|c: char| !c.is_whitespace()).unwrap() + 1;
    let err = stderr(&out);
    assert!(
        err.contains(&format!("bad.mil:{line}:{column}: function main, op "))
            && err.contains("slise"),
        "{err}"
    );
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

/// `mil kernels` writes every kernel of a run as the ANE compiler reads it, and `mil check
/// --chip` applies a chip's rules to one of them: the dynamic kernels fit the M4 and are
/// refused by the M1 (ios16 dialect), naming the rule.
#[test]
fn kernels_of_a_run_are_written_and_checked_against_a_chip() {
    let dir = Dir::new();
    let out = dir.s("kernels");
    let written = anetrain(&[
        "mil",
        "kernels",
        "--model",
        "tiny",
        "--weights",
        "dynamic",
        "--out",
        &out,
        "--chip",
        "m4",
    ]);
    assert!(written.status.success(), "{}", stderr(&written));
    assert!(stdout(&written).contains("6 kernels of `tiny` with --weights dynamic"));
    assert!(stdout(&written).contains("the M4 accepts every one"));
    let kernel = format!("{out}/fwd_attn.dynamic/model.mil");
    assert!(std::path::Path::new(&format!("{out}/fwd_attn.dynamic/weights/mask.bin")).exists());
    let m4 = anetrain(&["mil", "check", "--chip", "m4", &kernel]);
    assert!(m4.status.success(), "{}", stderr(&m4));
    assert!(stdout(&m4).contains("the M4 accepts it"), "{}", stdout(&m4));
    let m1 = anetrain(&["mil", "check", "--chip", "M1", &kernel]);
    assert!(!m1.status.success());
    assert!(stdout(&m1).contains("rule `dialect`"), "{}", stdout(&m1));
    assert!(
        stderr(&m1).contains("the M1 refuses 1 part(s)"),
        "{}",
        stderr(&m1)
    );

    // Baked: a kernel per layer, with that layer's weight files.
    let baked = dir.s("baked");
    let written = anetrain(&["mil", "kernels", "--model", "tiny", "--out", &baked]);
    assert!(written.status.success(), "{}", stderr(&written));
    assert!(stdout(&written).contains("21 kernels of `tiny` with --weights double-buffer"));
    assert!(std::path::Path::new(&format!("{baked}/fwd_ffn.3/weights/w1.bin")).exists());
    // The folder is not overwritten.
    let again = anetrain(&["mil", "kernels", "--model", "tiny", "--out", &baked]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is not empty"),
        "{}",
        stderr(&again)
    );
    // A file where the folder should be is named ("Not a directory" named nothing).
    let file = dir.write("a-file", "x");
    let onto = anetrain(&["mil", "kernels", "--model", "tiny", "--out", &file]);
    assert!(!onto.status.success());
    assert!(
        stderr(&onto).contains(&format!("--out {file}: Not a directory")),
        "{}",
        stderr(&onto)
    );
}

#[test]
fn a_program_a_chip_would_corrupt_is_refused_by_mil_check() {
    let dir = Dir::new();
    // Example C at 1024 channels and 8 columns: a width the chips corrupt, and too narrow for
    // so many channels.
    let text = std::fs::read_to_string(fixture("example_c.mil"))
        .unwrap()
        .replace("768", "1024")
        .replace("256]", "8]");
    let file = dir.write("narrow.mil", text);
    let out = anetrain(&["mil", "check", "--chip", "m4", &file]);
    assert!(!out.status.success());
    let report = stdout(&out);
    for rule in ["`spatial-multiple`", "`wide-io-width`"] {
        assert!(report.contains(rule), "{report}");
    }
    let unknown = anetrain(&["mil", "check", "--chip", "m9", &file]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("unknown chip `m9` (known: M1,"),
        "{}",
        stderr(&unknown)
    );
}

/// A damaged weight file is named by the file on disk, not only by its BLOBFILE path twice.
#[test]
fn run_names_the_damaged_weight_file_on_disk() {
    let dir = Dir::new();
    let mut bytes = BlobFile::fp16(&[0.0; 4096]).to_bytes();
    bytes[4] = 7; // the header's version
    std::fs::write(dir.path("w.bin"), bytes).unwrap();
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
        err.contains(&format!(
            "--weights @model_path/weights/weight.bin={w}: {w}: blob file header, byte 4: \
             version is 7, expected 2",
            w = dir.s("w.bin")
        )),
        "{err}"
    );
    assert!(!dir.path("y.npy").exists());
}

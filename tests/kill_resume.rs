//! A real `train` process killed with SIGKILL at several points, resumed each time: every
//! checkpoint it leaves loads, no temporary file outlives the next start, and the run that ends
//! equals the one that was never interrupted, bit for bit.

#![cfg(unix)]

mod common;

use anetrain_train::checkpoint::{list_checkpoints, Checkpoint};
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const STEPS: u64 = 150;

/// The files of a run: its configuration (a checkpoint every 10 updates), the tokenizer and the
/// corpus as tokens, made once so that each start goes straight to training.
struct Inputs {
    config: String,
    tokenizer: String,
    data: String,
}

/// `train` of `tiny` with recompiled weights (reproducible whatever the timing), in `out`.
fn train_args<'a>(inputs: &'a Inputs, steps: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        &inputs.config,
        "--tokenizer",
        &inputs.tokenizer,
        "--data",
        &inputs.data,
        "--steps",
        steps,
        "--weights",
        "recompile",
        "--out",
        out,
        "--quiet",
    ]
}

/// Every checkpoint in `dir` loads; the names of the temporary files there.
fn check_folder(dir: &Path) -> Vec<String> {
    for (_, path) in list_checkpoints(dir) {
        Checkpoint::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".anetrain-tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_run_killed_at_random_points_resumes_to_the_uninterrupted_result() {
    let dir = Dir::new();
    let inputs = Inputs {
        config: dir.write("run.toml", "[train]\ncheckpoint_every = 10\n"),
        tokenizer: dir.s("tokenizer.json"),
        data: dir.s("tokens.bin"),
    };
    ok(&anetrain(&[
        "tokenizer",
        "train",
        "--output",
        &inputs.tokenizer,
    ]));
    ok(&anetrain(&[
        "data",
        "prepare",
        "--tokenizer",
        &inputs.tokenizer,
        "--output",
        &inputs.data,
    ]));
    let steps = STEPS.to_string();
    let reference = dir.s("reference");
    let started = std::time::Instant::now();
    ok(&anetrain(&train_args(&inputs, &steps, &reference)));
    let span = started.elapsed().as_millis() as u64;
    let last = |folder: &str| {
        let (step, path) = list_checkpoints(Path::new(folder))
            .pop()
            .expect("a checkpoint");
        (step, Checkpoint::load(&path).unwrap())
    };
    let (ref_step, ref_ckpt) = last(&reference);
    assert_eq!(ref_step, STEPS);

    // From a fixed seed, so that a failure can be rerun.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    // Each between a tenth and nine tenths of what an uninterrupted run from the last
    // checkpoint would take.
    let mut next_ms = |from_step: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let remaining = span * (STEPS - from_step) / STEPS;
        remaining / 10 + state % (remaining * 8 / 10).max(1)
    };
    let out = dir.s("killed");
    let (mut kills, mut resumes) = (0, 0);
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 20, "the run never finished");
        let resume_from = list_checkpoints(Path::new(&out)).last().map(|c| c.0);
        let mut args = train_args(&inputs, &steps, &out);
        match resume_from {
            Some(_) => {
                resumes += 1;
                args.push("--resume");
            }
            // Killed before its first checkpoint: a run that has none can only start over.
            None if Path::new(&out).exists() => args.push("--overwrite"),
            None => {}
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_anetrain"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if kills < 4 {
            std::thread::sleep(Duration::from_millis(next_ms(resume_from.unwrap_or(0))));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                // Every checkpoint loads; a temporary file the kill left is removed by the next
                // start (checked at the end).
                check_folder(Path::new(&out));
                eprintln!(
                    "killed; checkpoints {:?}",
                    list_checkpoints(Path::new(&out))
                        .iter()
                        .map(|c| c.0)
                        .collect::<Vec<_>>()
                );
                continue;
            }
        }
        let status = child.wait_with_output().unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        break;
    }
    assert!(
        kills >= 2,
        "only {kills} kills landed while the run was going"
    );
    assert!(resumes >= 1, "no kill landed after a checkpoint");
    assert_eq!(check_folder(Path::new(&out)), Vec::<String>::new());
    let (step, ckpt) = last(&out);
    assert_eq!(step, STEPS);
    assert_eq!(ckpt.params.data, ref_ckpt.params.data, "weights");
    assert_eq!(ckpt.adam.m.data, ref_ckpt.adam.m.data, "first moments");
    assert_eq!(ckpt.adam.v.data, ref_ckpt.adam.v.data, "second moments");
    // The metrics hold each step once, across every kill and resume, with the losses of the
    // uninterrupted run.
    let losses = |folder: &str| -> Vec<(u64, f64)> {
        let metrics = std::fs::read_to_string(Path::new(folder).join("metrics.jsonl")).unwrap();
        metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["type"] == "step")
            .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
            .collect()
    };
    let resumed = losses(&out);
    let steps: Vec<u64> = resumed.iter().map(|r| r.0).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<u64>>());
    assert_eq!(resumed, losses(&reference));
}

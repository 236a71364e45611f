//! A real `train` process killed with SIGKILL at several points, resumed each time: every
//! checkpoint it leaves loads, no temporary file outlives the next start, and the run that ends
//! equals the one that was never interrupted, bit for bit.

#![cfg(unix)]

mod common;

use anetrain_train::checkpoint::{list_checkpoints, Checkpoint};
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// The latest update `metrics.jsonl` in `dir` records (0 before there is one).
fn latest_step(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["type"] == "step")
        .filter_map(|r| r["step"].as_u64())
        .max()
        .unwrap_or(0)
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
    ok(&anetrain(&train_args(&inputs, &steps, &reference)));
    let last = |folder: &str| {
        let (step, path) = list_checkpoints(Path::new(folder))
            .pop()
            .expect("a checkpoint");
        (step, Checkpoint::load(&path).unwrap())
    };
    let (ref_step, ref_ckpt) = last(&reference);
    assert_eq!(ref_step, STEPS);

    // Four kills, each a few updates (drawn from a fixed seed) past the last checkpoint, seen
    // in metrics.jsonl: by progress, not by time, so that a slow or fast machine kills at
    // the same points; the kill lands somewhere in the update after, a checkpoint write
    // among them now and then.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut draw = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let out = dir.s("killed");
    let mut from = 0;
    for kill in 0..4 {
        // The first past the first checkpoint (update 10), so that every restart resumes; each
        // past the rows the killed process left, which the resumed one cuts when it starts.
        let target = (from + 3 + draw(30))
            .max(latest_step(Path::new(&out)) + 1)
            .clamp(12, STEPS - 2);
        let mut args = train_args(&inputs, &steps, &out);
        if kill > 0 {
            args.push("--resume");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_anetrain"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while latest_step(Path::new(&out)) < target {
            if let Some(status) = child.try_wait().unwrap() {
                let err = child.wait_with_output().unwrap().stderr;
                panic!(
                    "the run ended ({status}) before update {target}: {}",
                    String::from_utf8_lossy(&err)
                );
            }
            assert!(started.elapsed() < Duration::from_secs(120), "no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Every checkpoint loads; a temporary file the kill left is removed by the next
        // start (checked at the end).
        check_folder(Path::new(&out));
        from = list_checkpoints(Path::new(&out))
            .last()
            .expect("a checkpoint")
            .0;
        assert!(
            from >= 10 && from <= target,
            "{from} after a kill at {target}"
        );
    }
    let mut args = train_args(&inputs, &steps, &out);
    args.push("--resume");
    ok(&anetrain(&args));
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

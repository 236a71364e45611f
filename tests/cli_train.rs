//! `anetrain train` end to end: resuming continues exactly; a spent compile budget makes the
//! process re-execute itself and still end with the weights of an uninterrupted run, and one
//! too small to start is refused; a simulated run says so; a model with more ids than its
//! tokenizer still samples text.

mod common;

use anetrain_train::checkpoint::{list_checkpoints, Checkpoint};
use anetrain_train::data::token_file::write_token_file;
use anetrain_train::tokenizer::train_bpe;
use common::*;
use std::path::Path;

/// A model, its tokenizer and a token file, as arguments.
struct Fixtures {
    model: String,
    tok: String,
    data: String,
}

impl Fixtures {
    /// `anetrain train` on the fixtures into `out`, with `extra` arguments.
    fn train(&self, out: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "train",
            "--model",
            &self.model,
            "--tokenizer",
            &self.tok,
            "--data",
            &self.data,
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        anetrain(&args)
    }
}

/// A one-layer model, a 300-token BPE and a token file from a slice of the corpus, so each
/// process starts in well under a second.
fn fixtures(dir: &Path) -> Fixtures {
    let text: String = anetrain_train::embedded_corpus()
        .chars()
        .take(60_000)
        .collect();
    let tok = train_bpe(&text, 300).unwrap();
    let tok_path = dir.join("tok.json");
    tok.save(&tok_path).unwrap();
    let ids = tok.encode(&text).unwrap();
    let data = dir.join("tokens.bin");
    write_token_file(&data, &ids, 300).unwrap();
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        "name = \"one\"\ndim = 32\nhidden = 64\nn_layers = 1\nn_heads = 2\nn_kv_heads = 2\nhead_dim = 16\nvocab = 300\nseq_len = 16\n",
    )
    .unwrap();
    let s = |p: &Path| p.display().to_string();
    Fixtures {
        model: s(&model),
        tok: s(&tok_path),
        data: s(&data),
    }
}

fn final_weights(dir: &Path) -> (u64, Vec<f32>, Vec<f32>) {
    let (step, path) = list_checkpoints(dir).pop().expect("a checkpoint");
    let c = Checkpoint::load(&path).unwrap();
    (step, c.params.data, c.adam.v.data)
}

#[test]
fn stop_and_resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let run = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out).display().to_string();
        let mut args = vec![
            "--steps",
            "8",
            "--weights",
            "recompile",
            "--quiet",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        f.train(&out, &args)
    };
    ok(&run("whole", &[]));
    ok(&run("halves", &["--stop-after", "4"]));
    assert_eq!(final_weights(&tmp.path().join("halves")).0, 4);
    ok(&run("halves", &["--resume"]));
    let (a, b) = (
        final_weights(&tmp.path().join("whole")),
        final_weights(&tmp.path().join("halves")),
    );
    assert_eq!(a.0, 8);
    assert_eq!(b.0, 8);
    assert!(a.1 == b.1, "weights differ after resume");
    assert!(a.2 == b.2, "optimizer moments differ after resume");
    // The per-step losses of the two halves are those of the whole run.
    let losses = |dir: &str| -> Vec<String> {
        std::fs::read_to_string(tmp.path().join(dir).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"type\":\"step\""))
            .map(|l| {
                l.split("\"loss\":")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(losses("whole"), losses("halves"));
}

#[test]
fn a_spent_compile_budget_restarts_the_process_and_ends_like_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let run = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out).display().to_string();
        let mut args = vec!["--steps", "10", "--weights", "recompile", "--threads", "1"];
        args.extend_from_slice(extra);
        f.train(&out, &args)
    };
    ok(&run("whole", &["--quiet"]));
    // 6 compiles at start, 5 per update: 25 pays for 3 sets, so each process runs 4 updates
    // (the 4th finds the budget short): 10 updates take two restarts.
    let o = run("budget", &["--compile-budget", "25"]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("restarting from").count(), 2, "{stdout}");
    let (a, b) = (
        final_weights(&tmp.path().join("whole")),
        final_weights(&tmp.path().join("budget")),
    );
    assert_eq!(b.0, 10);
    assert!(a.1 == b.1, "weights differ after restarts");
}

#[test]
fn simulated_run_labels_its_report_and_writes_a_trace_with_every_track() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let out = tmp.path().join("sim").display().to_string();
    let trace = tmp.path().join("trace.json");
    let o = f.train(
        &out,
        &[
            "--steps",
            "4",
            "--weights",
            "double-buffer",
            "--max-staleness",
            "2",
            "--simulate",
            "m4",
            "--trace",
            trace.to_str().unwrap(),
            "--threads",
            "1",
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("=== Efficiency report [simulated] ==="),
        "{stdout}"
    );
    assert!(stdout.contains("latency model: m4"), "{stdout}");
    let report = std::fs::read_to_string(tmp.path().join("sim").join("report.txt")).unwrap();
    assert!(report.contains("[simulated]"));
    // The stall splits into the start-up compile (the shared kernel and a 5-kernel set: at
    // least 6 × 24.8 ms on the m4 model) and what came after it.
    let seconds = |label: &str| -> f64 {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in {report}"));
        line.trim_start()[label.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no seconds in {line:?}"))
    };
    let (stall, startup, after) = (
        seconds("compile stall"),
        seconds("at start-up"),
        seconds("after start-up"),
    );
    assert!(startup >= 6.0 * 0.0248, "{report}");
    assert!((stall - startup - after).abs() <= 0.011, "{report}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    let spans = |tid: u64| {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == tid)
            .count()
    };
    // Device evals (6 per step per layer), compiles (6 at start, 5 per background set).
    assert!(spans(1) >= 4 * 6, "{} eval spans", spans(1));
    assert!(spans(2) >= 6, "{} compile spans", spans(2));
    // One host span per step.
    assert_eq!(spans(3), 4);
    // A compile span lasts what the m4 model says a 1-layer kernel takes: at least 24.8 ms.
    let longest = events
        .iter()
        .filter(|e| e["tid"] == 2 && e["ph"] == "X")
        .map(|e| e["dur"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(longest >= 24_800.0, "{longest} µs");
}

/// A model whose vocabulary is larger than its tokenizer's trains; the sample at the end of the
/// run and `generate` only draw ids the tokenizer can turn into text (most of this model's ids
/// are past it, so an unrestricted sampler fails to decode).
#[test]
fn a_model_vocabulary_larger_than_the_tokenizers_still_samples_text() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let model = tmp.path().join("wide.toml");
    std::fs::write(
        &model,
        "name = \"wide\"\ndim = 32\nhidden = 64\nn_layers = 1\nn_heads = 2\nn_kv_heads = 2\nhead_dim = 16\nvocab = 3000\nseq_len = 64\n",
    )
    .unwrap();
    let out = tmp.path().join("run").display().to_string();
    let wide = Fixtures {
        model: model.display().to_string(),
        ..f
    };
    let o = wide.train(&out, &["--steps", "2", "--quiet"]);
    ok(&o);
    assert!(stdout(&o).contains("sample: "), "{}", stdout(&o));
    let (_, ckpt) = list_checkpoints(Path::new(&out))
        .pop()
        .expect("a checkpoint");
    let ckpt = ckpt.display().to_string();
    let o = anetrain(&[
        "generate",
        "--checkpoint",
        &ckpt,
        "--prompt",
        "Mr",
        "--max-tokens",
        "12",
        "--temperature",
        "1.5",
    ]);
    ok(&o);
    assert!(stdout(&o).starts_with("Mr"), "{}", stdout(&o));
}

/// A compile budget smaller than the kernels a run starts on is refused at once, saying what it
/// would take, instead of failing in the middle of the first compile (and again after every
/// restart).
#[test]
fn a_compile_budget_too_small_for_one_kernel_set_is_refused_with_what_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let out = tmp.path().join("run").display().to_string();
    let run = |budget: &str| {
        f.train(
            &out,
            &[
                "--steps",
                "2",
                "--weights",
                "recompile",
                "--compile-budget",
                budget,
                "--quiet",
            ],
        )
    };
    // One layer: the shared kernel and five weight-bearing ones.
    let o = run("5");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("5 of 5 compiles left") && err.contains("(6 with --weights recompile)"),
        "{err}"
    );
    assert!(list_checkpoints(Path::new(&out)).is_empty());
    ok(&run("6"));
}

/// Options no run can use fail before anything is prepared, naming the option; a TOML run
/// configuration is checked the same way.
#[test]
fn unusable_options_are_refused_before_the_run_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let out_arg = out.display().to_string();
    let o = anetrain(&["train", "--lr", "-1", "--quiet", "--out", &out_arg]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("training options: lr must be a positive number, not -1"),
        "{}",
        stderr(&o)
    );
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, "[train]\nlr = 0.001\nmin_lr = 0.01\n").unwrap();
    let config = config.display().to_string();
    let o = anetrain(&["train", "--config", &config, "--quiet", "--out", &out_arg]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("min_lr (0.01) must not exceed lr (0.001)"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "nothing is written for a refused run");
}

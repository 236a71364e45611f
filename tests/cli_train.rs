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

/// The rows of a run's metrics.jsonl of one type.
fn metric_rows(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == kind)
        .collect()
}

/// `--resume` alone continues a run as it was started: its precision (fp16, with the loss
/// scale it had reached), learning rate, accumulation, weight delivery, validation schedule
/// and data file come from the checkpoint, not from the defaults. Every step and validation
/// row carries the fields the metrics promise.
#[test]
fn resume_alone_continues_the_run_as_it_was_started() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let started = [
        "--steps",
        "6",
        "--precision",
        "fp16",
        "--lr",
        "0.002",
        "--accum",
        "2",
        "--weights",
        "recompile",
        "--delay-compensation",
        "0",
        "--quiet",
        "--threads",
        "1",
    ];
    let whole = tmp.path().join("whole");
    let halves = tmp.path().join("halves");
    ok(&f.train(&whole.display().to_string(), &started));
    let mut first = started.to_vec();
    first.extend(["--stop-after", "3"]);
    ok(&f.train(&halves.display().to_string(), &first));
    // From another directory, with none of the run's flags (threads are the machine's).
    let resumed = std::process::Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(["train", "--resume", "--quiet", "--threads", "1", "--out"])
        .arg(&halves)
        .current_dir(tmp.path().join(".."))
        .output()
        .unwrap();
    ok(&resumed);
    assert!(
        stdout(&resumed).contains("fp16"),
        "the report names the resumed precision:\n{}",
        stdout(&resumed)
    );
    let (a, b) = (final_weights(&whole), final_weights(&halves));
    assert_eq!((a.0, b.0), (6, 6));
    assert!(a.1 == b.1, "weights differ after resume");
    assert!(a.2 == b.2, "optimizer moments differ after resume");

    // Timings differ between runs; nothing else may.
    let timeless = |rows: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        rows.into_iter()
            .map(|mut r| {
                let fields = r.as_object_mut().unwrap();
                fields.retain(|k, _| !k.ends_with("ms") && k != "tokens_per_s" && k != "start_s");
                fields.remove("eval_ms_by_kernel");
                r
            })
            .collect()
    };
    let steps_a = metric_rows(&whole, "step");
    assert_eq!(steps_a.len(), 6);
    assert_eq!(
        timeless(steps_a.clone()),
        timeless(metric_rows(&halves, "step"))
    );
    for (i, row) in steps_a.iter().enumerate() {
        assert_eq!(row["step"], i as u64 + 1);
        assert!(row["loss"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["lr"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["lr"].as_f64().unwrap() <= 0.002 + 1e-9, "{row}");
        assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ms"].as_f64().unwrap() > 0.0, "{row}");
        // fp16: the loss scale is reported per step.
        assert!(row["loss_scale"].as_f64().unwrap() >= 1.0, "{row}");
    }
    let val = metric_rows(&whole, "val");
    assert_eq!(val.last().unwrap()["step"], 6);
    assert!(
        val.iter().all(|v| v["val_loss"].as_f64().unwrap() > 0.0),
        "{val:?}"
    );
    // The stopped half validated at its stop too; both end on the same validation loss.
    assert_eq!(val.last(), metric_rows(&halves, "val").last());
    for file in ["loss.svg", "report.txt"] {
        assert!(whole.join(file).exists(), "{file}");
    }
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
    // The budgeted run starts over a folder holding an earlier run (--overwrite), which its
    // restarts, continuing their own run, must not repeat.
    let budget_out = tmp.path().join("budget").display().to_string();
    ok(&f.train(&budget_out, &["--steps", "12", "--quiet"]));
    // 6 compiles at start, 5 per update: 25 pays for 3 sets, so each process runs 4 updates
    // (the 4th finds the budget short): 10 updates take two restarts.
    let trace = tmp.path().join("trace.json");
    let o = run(
        "budget",
        &[
            "--compile-budget",
            "25",
            "--trace",
            trace.to_str().unwrap(),
            "--overwrite",
        ],
    );
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("restarting from").count(), 2, "{stdout}");
    let steps: Vec<u64> = metric_rows(&tmp.path().join("budget"), "step")
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=10).collect::<Vec<_>>(),
        "each step once, none of the old run's"
    );
    // The trace holds all three processes, one after another: 6 + 3 × 5 compiles in each of
    // the first two, and 6 + 2 × 5 in the last (updates 9 and 10).
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let compiles: Vec<(f64, f64)> = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X" && e["tid"] == 2)
        .map(|e| (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap()))
        .collect();
    assert_eq!(compiles.len(), 21 + 21 + 16);
    assert!(
        compiles.windows(2).all(|w| w[1].0 >= w[0].0 + w[0].1),
        "the processes' compiles follow each other"
    );
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
    // Device evals (6 per step per layer); the compiles the run waited for at start-up (the
    // shared kernel and a set of 5) and the background sets of 5.
    assert!(spans(1) >= 4 * 6, "{} eval spans", spans(1));
    assert_eq!(spans(2), 6, "start-up compiles");
    assert!(
        spans(4) >= 5 && spans(4) % 5 == 0,
        "{} background compile spans",
        spans(4)
    );
    // On the host track: each step, each step's optimizer update inside it, and the
    // validation at the end.
    let host: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["tid"] == 3)
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(host.iter().filter(|n| n.starts_with("step ")).count(), 4);
    assert_eq!(host.iter().filter(|n| **n == "optimizer").count(), 4);
    assert_eq!(host.iter().filter(|n| **n == "validation").count(), 1);
    let named = |prefix: &str| -> Vec<(f64, f64)> {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == 3)
            .filter(|e| e["name"].as_str().unwrap().starts_with(prefix))
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                (ts, ts + e["dur"].as_f64().unwrap())
            })
            .collect()
    };
    let steps = named("step ");
    for (o0, o1) in named("optimizer") {
        assert!(
            steps.iter().any(|&(s0, s1)| s0 <= o0 && o1 <= s1 + 1.0),
            "an optimizer span outside every step: {o0}..{o1} vs {steps:?}"
        );
    }
    let intervals = |tid: u64| -> Vec<(f64, f64)> {
        events
            .iter()
            .filter(|e| e["tid"] == tid && e["ph"] == "X")
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                (ts, ts + e["dur"].as_f64().unwrap())
            })
            .collect()
    };
    // A compile span lasts what the m4 model says a 1-layer kernel takes: at least 24.8 ms.
    let longest = intervals(2)
        .iter()
        .chain(&intervals(4))
        .map(|(a, b)| b - a)
        .fold(0.0, f64::max);
    assert!(longest >= 24_800.0, "{longest} µs");
    // What the trace is for: evals run while a background compile does.
    let overlapped = intervals(1)
        .iter()
        .any(|&(e0, e1)| intervals(4).iter().any(|&(c0, c1)| c0 <= e0 && e1 <= c1));
    assert!(overlapped, "no eval inside a background compile");
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

/// `eval`, `generate` and `export` on a trained checkpoint: eval's default is the validation
/// split of the run's own data, on which it reproduces the run's last validation loss; the
/// sampler's seed and top-p mean what they say; and an exported model samples exactly what
/// its checkpoint does.
#[test]
fn eval_generate_and_export_agree_with_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let run = tmp.path().join("run");
    ok(&f.train(
        &run.display().to_string(),
        &["--steps", "4", "--weights", "recompile", "--quiet"],
    ));
    let (_, ckpt) = list_checkpoints(&run).pop().expect("a checkpoint");
    let ckpt = ckpt.display().to_string();
    let val_loss = metric_rows(&run, "val").last().unwrap()["val_loss"]
        .as_f64()
        .unwrap();

    // The run validated on 16 windows of its data's validation split.
    let o = anetrain(&["eval", "--checkpoint", &ckpt, "--batches", "16"]);
    ok(&o);
    let text = stdout(&o);
    assert!(
        text.contains(&format!("mean loss {val_loss:.4} over 16 windows")),
        "{text}\nval {val_loss}"
    );
    assert!(
        text.contains("validation split of") && text.contains("tokens.bin"),
        "{text}"
    );
    // A file given is evaluated whole, and its loss is another.
    let o = anetrain(&[
        "eval",
        "--checkpoint",
        &ckpt,
        "--data",
        &f.data,
        "--batches",
        "4",
    ]);
    ok(&o);
    assert!(stdout(&o).contains("over 4 windows"), "{}", stdout(&o));

    let sample = |extra: &[&str]| {
        let mut args = vec!["generate", "--prompt", "It is", "--max-tokens", "24"];
        args.extend_from_slice(extra);
        let o = anetrain(&args);
        ok(&o);
        stdout(&o)
    };
    let from_ckpt = |extra: &[&str]| {
        let mut args = vec!["--checkpoint", ckpt.as_str()];
        args.extend_from_slice(extra);
        sample(&args)
    };
    let hot = ["--temperature", "1.0", "--top-p", "1.0"];
    let seeded = |seed: &str| from_ckpt(&[&hot[..], &["--seed", seed]].concat());
    assert_eq!(
        seeded("7"),
        seeded("7"),
        "the same seed gives the same text"
    );
    assert_ne!(seeded("7"), seeded("8"), "another seed, another text");
    // A nucleus this small holds only the most likely token: greedy decoding.
    let greedy = from_ckpt(&["--temperature", "0"]);
    assert_eq!(from_ckpt(&["--top-p", "0.000001", "--seed", "3"]), greedy);

    for (format, file) in [
        ("llama2c", "model.bin"),
        ("safetensors", "model.safetensors"),
    ] {
        let path = tmp.path().join(file).display().to_string();
        ok(&anetrain(&[
            "export",
            "--checkpoint",
            &ckpt,
            "--format",
            format,
            "--output",
            &path,
        ]));
        let exported = sample(&[
            "--model",
            &path,
            "--tokenizer",
            &f.tok,
            "--temperature",
            "0",
        ]);
        assert_eq!(exported, greedy, "{format}");
    }
    // A safetensors file's shape can also be given (a Hugging Face export has no anetrain
    // metadata); a shape that does not fit is refused.
    let st = tmp.path().join("model.safetensors").display().to_string();
    let given = ["--model", &st, "--tokenizer", &f.tok, "--temperature", "0"];
    assert_eq!(
        sample(&[&given[..], &["--config", &f.model]].concat()),
        greedy
    );
    let o = anetrain(&[&["generate"][..], &given[..], &["--config", "stories15m"]].concat());
    assert!(!o.status.success());
}

/// `bench weights` on a simulated chip: the rows asked for, each with the compiles, lag and
/// stall its strategy must have, and a row that does not exist refused by name.
#[test]
fn bench_weights_compares_the_chosen_strategies_with_frozen_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let steps = 6;
    let out = anetrain(&[
        "bench",
        "weights",
        "--config",
        &f.model,
        "--steps",
        &steps.to_string(),
        "--rounds",
        "2",
        "--simulate",
        "m4",
        "--only",
        "recompile,double-buffer",
    ]);
    ok(&out);
    let text = stdout(&out);
    assert!(text.contains("[simulated]"), "{text}");
    assert!(
        text.contains("noise: the frozen run closing a round"),
        "{text}"
    );
    // name → (vs frozen %, stall %, lag mean, lag max, compiles)
    let row = |name: &str| -> (f64, f64, f64, u64, u64) {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row `{name}` in\n{text}"));
        let cols: Vec<&str> = line[30..].split_whitespace().collect();
        let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().unwrap();
        let (mean, max) = cols[7].split_once('/').unwrap();
        (
            pct(cols[2]),
            pct(cols[4]),
            mean.parse().unwrap(),
            max.parse().unwrap(),
            cols[8].parse().unwrap(),
        )
    };
    assert!(!text.contains("\ndynamic"), "{text}");
    assert!(!text.contains("prediction "), "{text}");
    // One layer: five weight-bearing kernels and one without weights, compiled once.
    let (set, once) = (5, 1);
    let frozen = row("frozen kernels");
    assert_eq!(frozen.4, set + once);
    assert_eq!(frozen.0, 100.0);
    let recompile = row("recompile");
    assert_eq!(recompile.4, set + once + steps * set);
    assert_eq!((recompile.2, recompile.3), (0.0, 0));
    let db = row("double-buffer (K=1)");
    assert_eq!(db.4, set + once + steps * set);
    assert_eq!(db.3, 1, "the device lags by at most K=1 update");
    assert!(db.2 > 0.0);
    // On the m4 model a set compiles in far longer than a step of this model evaluates:
    // recompiling after every update is nearly all compile stall, and the double buffer
    // stalls less because its compiles overlap the evals.
    assert!(recompile.1 > 90.0, "{text}");
    assert!(db.1 < recompile.1, "{text}");
    assert!(recompile.0 < 100.0, "{text}");

    let bad = anetrain(&["bench", "weights", "--only", "double-buffer,fastest"]);
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert!(
        err.contains("no row `fastest`") && err.contains("recompile, double-buffer, dc"),
        "{err}"
    );
}

/// A new run into a folder that holds one is refused and changes nothing there; with
/// `--overwrite` the earlier run's files go and the folder holds the new run alone.
#[test]
fn a_new_run_does_not_mix_with_the_run_its_folder_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let out = tmp.path().join("run");
    let out_s = out.display().to_string();
    ok(&f.train(&out_s, &["--steps", "4", "--quiet"]));
    let before: Vec<(String, Vec<u8>)> = {
        let mut files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    assert!(before.iter().any(|(n, _)| n == "ckpt-00000004.bin"));

    let refused = f.train(&out_s, &["--steps", "2", "--quiet"]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains(&out_s) && err.contains("step 4") && err.contains("--resume"),
        "{err}"
    );
    for (name, bytes) in &before {
        assert_eq!(
            &std::fs::read(out.join(name)).unwrap(),
            bytes,
            "{name} changed"
        );
    }

    // Nor may a run resumed from another folder's checkpoint land there, and --overwrite
    // cannot delete the run --resume continues.
    let other = tmp.path().join("other").display().to_string();
    ok(&f.train(&other, &["--steps", "2", "--quiet"]));
    let elsewhere = format!("{other}/ckpt-00000002.bin");
    let refused = f.train(&out_s, &["--resume", &elsewhere, "--steps", "3", "--quiet"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("holds a run already"),
        "{}",
        stderr(&refused)
    );
    let contradiction = f.train(&out_s, &["--resume", "--overwrite", "--quiet"]);
    assert!(!contradiction.status.success());
    assert!(stderr(&contradiction).contains("--overwrite would delete the run"));
    for (name, bytes) in &before {
        assert_eq!(
            &std::fs::read(out.join(name)).unwrap(),
            bytes,
            "{name} changed"
        );
    }

    // A bad flag alongside --overwrite deletes nothing either.
    let bad = f.train(
        &out_s,
        &["--steps", "2", "--quiet", "--overwrite", "--lr", "-1"],
    );
    assert!(!bad.status.success());
    assert!(out.join("ckpt-00000004.bin").exists());

    ok(&f.train(&out_s, &["--steps", "2", "--quiet", "--overwrite"]));
    let steps: Vec<u64> = metric_rows(&out, "step")
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2]);
    let checkpoints: Vec<u64> = list_checkpoints(&out).iter().map(|(s, _)| *s).collect();
    assert_eq!(checkpoints, [2]);
}

/// On a real clock the host track also shows the host math between a step's evals: each
/// piece inside its step, and none at the same time as an eval (both run on the training
/// thread, one after the other).
#[test]
fn the_trace_shows_each_steps_host_math_between_its_evals() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let out = tmp.path().join("run").display().to_string();
    let trace = tmp.path().join("trace.json");
    let steps = 3;
    ok(&f.train(
        &out,
        &[
            "--steps",
            &steps.to_string(),
            "--quiet",
            "--trace",
            trace.to_str().unwrap(),
        ],
    ));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let spans = |tid: u64| -> Vec<(String, f64, f64)> {
        json["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X" && e["tid"] == tid)
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                let name = e["name"].as_str().unwrap().to_string();
                (name, ts, ts + e["dur"].as_f64().unwrap())
            })
            .collect()
    };
    let (host, evals) = (spans(3), spans(1));
    let step_spans: Vec<_> = host.iter().filter(|s| s.0.starts_with("step ")).collect();
    assert_eq!(step_spans.len(), steps);
    // One layer: the final norm's backward and the layer's two.
    let per_step = [
        ("embedding", 1),
        ("loss and classifier", 1),
        ("norm backward", 3),
        ("waiting for weight gradients", 1),
        ("embedding backward", 1),
    ];
    for (name, count) in per_step {
        let pieces: Vec<_> = host.iter().filter(|s| s.0 == name).collect();
        assert_eq!(pieces.len(), count * steps, "{name}");
        for (_, start, end) in pieces {
            assert!(
                step_spans
                    .iter()
                    .any(|(_, s0, s1)| s0 <= start && end <= &(s1 + 1.0)),
                "{name} at {start}..{end} is in no step"
            );
            // Trace times are in µs, rounded: allow the rounding at each end.
            if let Some(e) = evals
                .iter()
                .find(|(_, e0, e1)| *start < e1 - 1.0 && *e0 < end - 1.0)
            {
                panic!("{name} at {start}..{end} overlaps eval {e:?}");
            }
        }
    }
}

/// A run resumed from a checkpoint older than its last steps (a process that stopped between
/// checkpoints) drops the metrics of the steps it computes again, so metrics.jsonl holds every
/// step once, and its loss plot covers the whole run, not only the resumed process.
#[test]
fn a_resumed_run_keeps_each_step_once_in_its_metrics_and_plots_the_whole_run() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures(tmp.path());
    let out = tmp.path().join("run");
    let out_s = out.display().to_string();
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, "[train]\ncheckpoint_every = 2\n").unwrap();
    let config = config.display().to_string();
    ok(&f.train(&out_s, &["--steps", "6", "--quiet", "--config", &config]));
    // The process "stopped" after step 6 with its newest checkpoint at 4: resume from 4.
    let ckpt4 = out.join("ckpt-00000004.bin").display().to_string();
    // A line torn by the crash at the end of the file goes too.
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("metrics.jsonl"))
        .unwrap();
    // (cut inside a two-byte character)
    std::io::Write::write_all(
        &mut torn,
        b"{\"type\":\"compile_failed\",\"message\":\"\xc3",
    )
    .unwrap();
    drop(torn);
    ok(&f.train(
        &out_s,
        &[
            "--resume", &ckpt4, "--steps", "8", "--quiet", "--config", &config,
        ],
    ));
    let steps: Vec<u64> = metric_rows(&out, "step")
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    let vals: Vec<u64> = metric_rows(&out, "val")
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        vals,
        [8],
        "the first process's validation at step 6 is gone"
    );
    // The plot's training line has a point per step of the run, the validation line one.
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    let points = |stroke: &str| {
        let line = svg
            .lines()
            .find(|l| l.contains("<polyline") && l.contains(stroke))
            .unwrap();
        let list = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        list.split_whitespace().count()
    };
    assert_eq!(points("#1f77b4"), 8, "{svg}");
    assert_eq!(points("#d62728"), 1, "{svg}");
}

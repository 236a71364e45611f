//! The command line misused: each case once panicked, overwrote its input, or passed a
//! nonsense value silently. Each must now exit non-zero with an error naming what is wrong,
//! and leave the files it was given as they were.

mod common;

use anetrain::npy;
use anetrain_mil::blob::BlobFile;
use anetrain_mil::DType;
use anetrain_train::checkpoint::list_checkpoints;
use anetrain_train::data::token_file::write_token_file;
use anetrain_train::tokenizer::train_bpe;
use common::*;

/// A checkpoint of a one-layer model (vocabulary 300) trained for two steps, its tokenizer,
/// and the text they came from.
struct Trained {
    dir: Dir,
    checkpoint: String,
    tokenizer: String,
    text: String,
}

fn trained() -> Trained {
    let dir = Dir::new();
    let text: String = anetrain_train::embedded_corpus()
        .chars()
        .take(40_000)
        .collect();
    let tok = train_bpe(&text, 300).unwrap();
    tok.save(&dir.path("tok.json")).unwrap();
    write_token_file(&dir.path("tokens.bin"), &tok.encode(&text).unwrap(), 300).unwrap();
    let model = dir.write(
        "model.toml",
        "name = \"one\"\ndim = 32\nhidden = 64\nn_layers = 1\nn_heads = 2\nn_kv_heads = 2\nhead_dim = 16\nvocab = 300\nseq_len = 16\n",
    );
    let run = dir.s("run");
    ok(&anetrain(&[
        "train",
        "--model",
        &model,
        "--tokenizer",
        &dir.s("tok.json"),
        "--data",
        &dir.s("tokens.bin"),
        "--out",
        &run,
        "--steps",
        "2",
        "--quiet",
    ]));
    let (_, checkpoint) = list_checkpoints(&dir.path("run"))
        .pop()
        .expect("a checkpoint");
    Trained {
        checkpoint: checkpoint.display().to_string(),
        tokenizer: dir.s("tok.json"),
        text,
        dir,
    }
}

impl Trained {
    /// The trained checkpoint exported as a llama2.c model file; its path.
    fn llama2c_model(&self) -> String {
        let model = self.dir.s("model.bin");
        ok(&anetrain(&[
            "export",
            "--checkpoint",
            &self.checkpoint,
            "--format",
            "llama2c",
            "--output",
            &model,
        ]));
        model
    }
}

fn refused(args: &[&str], message: &str) {
    let out = anetrain(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = stderr(&out);
    assert!(err.contains(message), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// `generate` with a tokenizer of more ids than the model's vocabulary panicked slicing the
/// logits ("range start index … out of range"); `train` already refused the pair.
#[test]
fn generate_refuses_a_tokenizer_larger_than_the_models_vocabulary() {
    let t = trained();
    let model = t.llama2c_model();
    let big = train_bpe(&t.text, 600).unwrap();
    big.save(&t.dir.path("big.json")).unwrap();
    let big_tok = t.dir.s("big.json");
    refused(
        &[
            "generate",
            "--model",
            &model,
            "--tokenizer",
            &big_tok,
            "--prompt",
            "It",
        ],
        &format!("the tokenizer has {} tokens but model", big.vocab_size()),
    );
    refused(
        &["generate", "--model", &model, "--tokenizer", &big_tok],
        "has a vocabulary of 300",
    );
    // `train --init` with that pair blamed the embedded corpus ("token 22 is 412, outside the
    // vocabulary"); it names the mismatch, before any data is read.
    let out = t.dir.s("init-run");
    refused(
        &[
            "train",
            "--init",
            &model,
            "--tokenizer",
            &big_tok,
            "--steps",
            "1",
            "--out",
            &out,
        ],
        &format!(
            "the tokenizer has {} tokens but model `llama2c` has a vocabulary of 300",
            big.vocab_size()
        ),
    );
    // The model's own tokenizer still samples.
    let out = anetrain(&[
        "generate",
        "--model",
        &model,
        "--tokenizer",
        &t.tokenizer,
        "--prompt",
        "It",
    ]);
    ok(&out);
}

/// `--threads 100000` panicked after half a minute, failing to spawn its threads.
#[test]
fn a_thread_count_beyond_the_machine_is_refused_naming_its_cores() {
    let dir = Dir::new();
    let out = dir.s("run");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    refused(
        &[
            "train",
            "--threads",
            "100000",
            "--steps",
            "1",
            "--out",
            &out,
        ],
        &format!("threads 100000 is more than this machine can use: it has {cores} core(s)"),
    );
    assert!(!dir.path("run").exists(), "no run folder is made");
}

/// NaN passed every check of `--temperature`, and `eval --batches 0` quietly became 1.
#[test]
fn nonsense_sampling_and_eval_values_are_refused() {
    let t = trained();
    for temperature in ["nan", "-1", "inf"] {
        let flag = format!("--temperature={temperature}");
        refused(
            &["generate", "--checkpoint", &t.checkpoint, &flag],
            "--temperature",
        );
    }
    refused(
        &["eval", "--checkpoint", &t.checkpoint, "--batches", "0"],
        "--batches must be at least 1",
    );
}

/// `export --output` equal to `--checkpoint`, and `data prepare --output` equal to
/// `--input`, overwrote the input without a word.
#[test]
fn a_command_does_not_write_over_its_own_input() {
    let t = trained();
    let before = std::fs::read(&t.checkpoint).unwrap();
    refused(
        &[
            "export",
            "--checkpoint",
            &t.checkpoint,
            "--format",
            "safetensors",
            "--output",
            &t.checkpoint,
        ],
        "is the checkpoint itself",
    );
    assert_eq!(std::fs::read(&t.checkpoint).unwrap(), before);
    let text = t
        .dir
        .write("text.txt", "It is a truth universally acknowledged.");
    // The same file, named another way.
    let again = format!("{}/../text.txt", t.dir.s("run"));
    refused(
        &[
            "data",
            "prepare",
            "--tokenizer",
            &t.tokenizer,
            "--input",
            &text,
            "--output",
            &again,
        ],
        "is the --input text itself",
    );
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "It is a truth universally acknowledged."
    );
}

/// Two exports of one checkpoint as safetensors differed byte for byte: the metadata's keys
/// came in a hash map's order.
#[test]
fn exporting_a_checkpoint_twice_gives_the_same_bytes() {
    let t = trained();
    let files: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let path = t.dir.s(&format!("m{i}.safetensors"));
            ok(&anetrain(&[
                "export",
                "--checkpoint",
                &t.checkpoint,
                "--format",
                "safetensors",
                "--output",
                &path,
            ]));
            std::fs::read(&path).unwrap()
        })
        .collect();
    for (i, f) in files.iter().enumerate() {
        assert!(f == &files[0], "export {i} differs from export 0");
    }
}

/// `--weights PATH=FILE` and `--input NAME=FILE` split at the last `=`, so a file whose name
/// holds one could not be given.
#[test]
fn a_file_name_with_an_equals_sign_is_read() {
    let dir = Dir::new();
    let (d, s) = (768, 256);
    std::fs::write(
        dir.path("w=1.bin"),
        BlobFile::fp16(&vec![1.0; d]).to_bytes(),
    )
    .unwrap();
    let x = vec![0.5f32; d * s];
    npy::write_atomic(&dir.path("x=a.npy"), DType::Fp16, &[1, d, 1, s], &x).unwrap();
    let out = anetrain(&[
        "mil",
        "run",
        &fixture("example_c.mil"),
        "--weights",
        &format!("@model_path/weights/rms_w.bin={}", dir.s("w=1.bin")),
        "--input",
        &format!("x={}", dir.s("x=a.npy")),
        "--output",
        &dir.s("out.npy"),
    ]);
    ok(&out);
    let y = npy::read(&dir.path("out.npy")).unwrap();
    // Every value 0.5 over an RMS of 0.5: one, within fp16 rounding.
    assert!(
        y.data.iter().all(|v| (v - 1.0).abs() < 1e-2),
        "{:?}",
        &y.data[..4]
    );
}

/// Flags that contradict each other, or that a run would ignore, were taken silently:
/// `generate --checkpoint C --model M` ignored `--model`, `train --resume --model stories15m`
/// kept training the saved model, `--init` went with `--resume`, `--steps 0` wrote a report and
/// no checkpoint, and `--trace DIR` failed only after the whole run.
#[test]
fn contradicting_or_ignored_flags_are_refused_before_anything_runs() {
    let t = trained();
    let run = t.dir.s("run");
    let model = t.dir.s("model.toml");
    refused(
        &["generate", "--checkpoint", &t.checkpoint, "--model", &model],
        "cannot be used with",
    );
    refused(
        &["train", "--out", &run, "--resume", "--model", "stories15m"],
        "the checkpoint holds model `one`, and a resumed run keeps its model",
    );
    // The model the run was started with is not a contradiction (a budget restart passes it).
    ok(&anetrain(&[
        "train", "--out", &run, "--resume", "--model", &model, "--steps", "3", "--quiet",
    ]));
    refused(
        &["train", "--out", &run, "--resume", "--init", &t.checkpoint],
        "cannot be used with",
    );
    let fresh = t.dir.s("fresh");
    refused(
        &["train", "--steps", "0", "--out", &fresh],
        "steps must be at least 1",
    );
    let folder = t.dir.s("run");
    refused(
        &["train", "--steps", "2", "--out", &fresh, "--trace", &folder],
        "--trace",
    );
    assert!(!t.dir.path("fresh").exists(), "nothing was started");
}

/// A diverged run (`--lr 1e30`: weights blow up, every later gradient NaN) went on skipping
/// updates to the end, exited 0, and blamed "fp16 overflow" in an fp32 run.
#[test]
fn a_diverged_run_stops_with_an_error_naming_the_step() {
    let t = trained();
    let run = t.dir.s("diverged");
    let out = anetrain(&[
        "train",
        "--model",
        &t.dir.s("model.toml"),
        "--tokenizer",
        &t.tokenizer,
        "--data",
        &t.dir.s("tokens.bin"),
        "--out",
        &run,
        "--lr",
        "1e30",
        "--steps",
        "50",
        "--quiet",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("training diverged at step") && err.contains("gradient is not finite"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !t.dir.path("diverged/report.txt").exists(),
        "no report of a diverged run"
    );
    // The folder now holds a run with no checkpoint: both ways in say how to get out.
    refused(
        &["train", "--out", &run],
        "no checkpoint: it stopped before its first",
    );
    refused(
        &["train", "--out", &run, "--resume"],
        "stopped before its first checkpoint; start it over with --overwrite",
    );
}

/// A model file's sizes are checked, by name, before anything is sized from them: these used
/// to grow to gigabytes and abort, or wrap into a nonsense error.
#[test]
fn a_model_file_with_absurd_sizes_is_refused_naming_the_file_and_the_field() {
    let dir = Dir::new();
    let model = |lines: &[(&str, &str)]| {
        let mut text = String::from("name = \"big\"\n");
        for (key, default) in [
            ("dim", "128"),
            ("hidden", "384"),
            ("n_layers", "2"),
            ("n_heads", "4"),
            ("n_kv_heads", "4"),
            ("head_dim", "32"),
            ("vocab", "1024"),
            ("seq_len", "128"),
        ] {
            let value = lines
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(default, |l| l.1);
            text += &format!("{key} = {value}\n");
        }
        for (key, value) in lines
            .iter()
            .filter(|(k, _)| k.starts_with("norm") || k.starts_with("rope"))
        {
            text += &format!("{key} = {value}\n");
        }
        dir.write("m.toml", text)
    };
    let out = dir.s("run");
    for (lines, message) in [
        (
            vec![("n_layers", "1000000000000")],
            "n_layers = 1000000000000 is beyond the largest supported, 4096",
        ),
        (
            vec![("hidden", "4611686018427387904")],
            "hidden = 4611686018427387904 is beyond the largest supported",
        ),
        (
            vec![("dim", "4294967168")],
            "dim = 4294967168 is beyond the largest supported",
        ),
        (
            vec![("vocab", "4294967295")],
            "vocab = 4294967295 is beyond the largest supported",
        ),
        (vec![("dim", "0")], "dim must be positive"),
        (
            vec![("norm_eps", "nan")],
            "norm_eps must be a positive number, not NaN",
        ),
        (
            vec![("rope_theta", "-1.0")],
            "rope_theta must be a positive number, not -1",
        ),
    ] {
        let path = model(&lines);
        refused(
            &["train", "--model", &path, "--steps", "1", "--out", &out],
            &format!("error: config file {path}: {message}"),
        );
    }
    // Each size within its bound, the whole far beyond any machine's memory.
    let path = model(&[
        ("dim", "1048576"),
        ("hidden", "4194304"),
        ("n_layers", "4096"),
    ]);
    if anetrain_device::memory::physical_memory().is_some() {
        refused(
            &["train", "--model", &path, "--steps", "1", "--out", &out],
            "error: model `big` needs at least ",
        );
    }
    assert!(!dir.path("run").join("metrics.jsonl").exists());
}

/// `lr = nan` in a run configuration was reported as "invalid type: null".
#[test]
fn a_run_configuration_with_a_float_that_is_not_finite_names_the_key() {
    let dir = Dir::new();
    let out = dir.s("run");
    for (line, shown) in [
        ("lr = nan", "lr = NaN"),
        ("delay_compensation = inf", "delay_compensation = inf"),
        ("[train.adam]\neps = -inf", "adam.eps = -inf"),
    ] {
        let config = dir.write("run.toml", format!("[train]\nsteps = 2\n{line}\n"));
        refused(
            &["train", "--config", &config, "--out", &out],
            &format!("error: [train] in {config}: {shown} is not a finite number"),
        );
    }
}

/// A metrics log that cannot be written (here /dev/full, as a full disk) used to go unnoticed
/// until the end of the run, every row lost. The run now stops after the update it is in, with
/// a checkpoint, and resumes once there is room.
#[cfg(target_os = "linux")]
#[test]
fn a_metrics_log_that_cannot_be_written_stops_the_run_with_a_checkpoint() {
    let dir = Dir::new();
    let out = dir.s("run");
    std::fs::create_dir_all(dir.path("run")).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path("run/metrics.jsonl")).unwrap();
    let run = anetrain(&["train", "--steps", "6", "--out", &out, "--quiet"]);
    assert!(!run.status.success());
    let err = stderr(&run);
    let checkpoint = dir.path("run/ckpt-00000001.bin");
    assert!(
        err.contains("No space left on device")
            && err.contains(&format!(
                "the run stopped after update 1, its newest checkpoint {}: make room, then continue \
                 it with --resume",
                checkpoint.display()
            )),
        "{err}"
    );
    assert!(checkpoint.is_file());
    assert!(!err.contains("panicked"), "{err}");

    // Room again: the run continues from its checkpoint to the end of the schedule.
    std::fs::remove_file(dir.path("run/metrics.jsonl")).unwrap();
    ok(&anetrain(&["train", "--out", &out, "--resume", "--quiet"]));
    let metrics = std::fs::read_to_string(dir.path("run/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "step")
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2, 3, 4, 5, 6]);

    // Failing in the last update, the run has nothing left to stop, and says the same.
    let last = dir.s("last");
    std::fs::create_dir_all(dir.path("last")).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path("last/metrics.jsonl")).unwrap();
    let run = anetrain(&["train", "--steps", "1", "--out", &last, "--quiet"]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains(&format!(
            "the run stopped after update 1, its newest checkpoint {}",
            dir.path("last/ckpt-00000001.bin").display()
        )),
        "{err}"
    );
}

/// A llama2.c tokenizer.bin cut on a record boundary loaded as a smaller vocabulary without a
/// word (the format has no count). Its model's vocabulary says how many records it must hold.
#[test]
fn a_llama2c_tokenizer_cut_on_a_record_boundary_is_refused_against_its_model() {
    use anetrain_train::tokenizer::{Llama2cTokenizer, Tokenizer};
    let t = trained();
    let model = t.llama2c_model();
    // 300 records, one per id of the model: the three specials, 256 byte tokens, 41 more.
    let mut pieces: Vec<(Vec<u8>, f32)> = ["<unk>", "\n<s>\n", "\n</s>\n"]
        .iter()
        .map(|p| (p.as_bytes().to_vec(), 0.0))
        .collect();
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>").into_bytes(), 0.0)));
    pieces.extend((0..41).map(|i| (format!("w{i}").into_bytes(), -(i as f32))));
    let whole = Tokenizer::Llama2c(Llama2cTokenizer::new(pieces).unwrap());
    let whole_path = t.dir.path("tokenizer.bin");
    whole.save(&whole_path).unwrap();
    let bytes = std::fs::read(&whole_path).unwrap();
    // The first 100 records: 4 header bytes, then per record 8 bytes and its piece.
    let mut end = 4;
    for id in 0..100u32 {
        let Tokenizer::Llama2c(l) = &whole else {
            unreachable!()
        };
        end += 8 + l.piece(id).unwrap().len();
    }
    let cut = t.dir.write("cut.bin", &bytes[..end]);
    refused(
        &[
            "generate",
            "--model",
            &model,
            "--tokenizer",
            &cut,
            "--max-tokens",
            "3",
        ],
        "the llama2.c tokenizer has 100 tokens but model `llama2c` has a vocabulary of 300: a \
         tokenizer.bin holds one record per id of its model, so this one is cut short or belongs \
         to another model",
    );
    // The whole file serves the model.
    ok(&anetrain(&[
        "generate",
        "--model",
        &model,
        "--tokenizer",
        &t.dir.s("tokenizer.bin"),
        "--max-tokens",
        "3",
    ]));
    // A run with it exports to llama2.c and safetensors, but not to a Hugging Face folder,
    // which needs a tokenizer.json.
    ok(&anetrain(&[
        "train",
        "--init",
        &model,
        "--tokenizer",
        &t.dir.s("tokenizer.bin"),
        "--data",
        &t.dir.s("tokens.bin"),
        "--steps",
        "1",
        "--out",
        &t.dir.s("run2"),
        "--quiet",
    ]));
    let folder = t.dir.s("folder");
    refused(
        &[
            "export",
            "--checkpoint",
            &t.dir.s("run2/ckpt-00000001.bin"),
            "--format",
            "hf",
            "--output",
            &folder,
        ],
        "--format hf: the checkpoint's tokenizer is a llama2.c tokenizer.bin",
    );
    assert!(!std::path::Path::new(&folder).exists());
}

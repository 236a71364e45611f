//! Hugging Face model folders against transformers itself: the fixtures in
//! `tests/fixtures/hf/` were saved by `save_pretrained`, with the logits and losses transformers
//! computed for a few token windows (`make_fixtures.py`, run once; CI needs no torch).

mod common;

use anetrain::npy;
use anetrain_model::generate::Decoder;
use anetrain_model::io::load_model_file;
use common::*;
use std::path::PathBuf;

fn folder(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// Mean cross-entropy of each next token under `logits` (`[seq][vocab]`), in f64.
fn next_token_loss(logits: &[Vec<f32>], ids: &[u32]) -> f64 {
    let mut total = 0.0;
    for (row, &next) in logits.iter().zip(&ids[1..]) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        total += max + sum.ln() - row[next as usize] as f64;
    }
    total / (ids.len() - 1) as f64
}

/// The largest error of the logits (relative to 1 + |logit|) and of the losses our load and
/// the host decoder give for the fixture's windows, against transformers'.
fn errors_against_transformers(
    dir: &std::path::Path,
    params: &anetrain_model::Params,
) -> (f64, f64) {
    let windows = npy::read(&dir.join("windows.npy")).unwrap();
    let want = npy::read(&dir.join("logits.npy")).unwrap();
    let losses = npy::read(&dir.join("loss.npy")).unwrap();
    let (n, seq, vocab) = (want.shape[0], want.shape[1], want.shape[2]);
    assert_eq!(
        (windows.shape.as_slice(), vocab),
        ([n, seq].as_slice(), params.layout.config.vocab)
    );
    let (mut logit_error, mut loss_error) = (0.0f64, 0.0f64);
    for w in 0..n {
        let ids: Vec<u32> = windows.data[w * seq..(w + 1) * seq]
            .iter()
            .map(|&v| v as u32)
            .collect();
        let mut decoder = Decoder::new(params);
        let mut got = Vec::new();
        for (t, &id) in ids.iter().enumerate() {
            let row = decoder.step(id);
            let expected = &want.data[(w * seq + t) * vocab..(w * seq + t + 1) * vocab];
            for (&g, &e) in row.iter().zip(expected) {
                let error = (g - e).abs() as f64 / (1.0 + e.abs() as f64);
                logit_error = logit_error.max(error);
            }
            got.push(row);
        }
        let loss = next_token_loss(&got, &ids);
        loss_error = loss_error.max((loss - losses.data[w] as f64).abs());
    }
    // The logits are far from zero, so a wrong weight would show.
    let spread = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(spread > 1.0, "{spread}");
    (logit_error, loss_error)
}

#[test]
fn a_llama_folder_gives_the_logits_and_losses_transformers_computed() {
    let dir = folder("llama");
    let params = load_model_file(&dir, None).unwrap();
    let c = &params.layout.config;
    assert_eq!(
        (
            c.dim,
            c.hidden,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.vocab
        ),
        (64, 160, 2, 4, 2, 16, 300)
    );
    assert!(!c.tied_embedding && !c.qk_norm);
    // transformers 5 writes the base of the rotation under `rope_parameters`.
    assert_eq!((c.rope_theta, c.norm_eps, c.seq_len), (10_000.0, 1e-5, 64));
    let (logits, loss) = errors_against_transformers(&dir, &params);
    assert!(
        logits <= 1e-4 && loss <= 1e-4,
        "logits {logits:e}, loss {loss:e}"
    );
    eprintln!("llama: largest errors against transformers: logits {logits:e}, loss {loss:e}");
}

/// Qwen3's per-head q/k norms, its tied embedding and its rotary base: the fixture's norm
/// weights are drawn away from one, so a norm left out or permuted wrongly would show.
#[test]
fn a_qwen3_folder_gives_the_logits_and_losses_transformers_computed() {
    let dir = folder("qwen3");
    let params = load_model_file(&dir, None).unwrap();
    let c = &params.layout.config;
    assert!(c.qk_norm && c.tied_embedding);
    assert_eq!((c.rope_theta, c.head_dim, c.n_kv_heads), (1e6, 16, 2));
    let (logits, loss) = errors_against_transformers(&dir, &params);
    assert!(
        logits <= 1e-4 && loss <= 1e-4,
        "logits {logits:e}, loss {loss:e}"
    );
    eprintln!("qwen3: largest errors against transformers: logits {logits:e}, loss {loss:e}");
    // Leaving the norms at one computes something else.
    let mut plain = params.clone();
    for l in 0..c.n_layers {
        for t in [
            anetrain_model::LayerTensor::QNorm,
            anetrain_model::LayerTensor::KNorm,
        ] {
            plain.layer_mut(l, t).fill(1.0);
        }
    }
    let (plain_logits, _) = errors_against_transformers(&dir, &plain);
    assert!(
        plain_logits > 1e-2,
        "the norm weights must matter: {plain_logits:e}"
    );
}

#[test]
fn what_a_config_asks_that_the_model_does_not_compute_is_refused_by_field() {
    let source = folder("llama");
    let text = std::fs::read_to_string(source.join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = Dir::new();
    for (field, value, message) in [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "rope_scaling = {\"factor\":8.0,\"rope_type\":\"llama3\"}: rotary scaling is not computed",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}),
            "rope_parameters = {\"factor\":8.0,\"rope_theta\":500000.0,\"rope_type\":\"llama3\"}: rotary scaling is not computed",
        ),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act = gelu: the feed-forward is SwiGLU"),
        ("attention_bias", serde_json::json!(true), "attention_bias = true: the model has no biases"),
        (
            "architectures",
            serde_json::json!(["MistralForCausalLM"]),
            "architectures = MistralForCausalLM: only LlamaForCausalLM and Qwen3ForCausalLM are read",
        ),
        (
            "use_sliding_window",
            serde_json::json!(true),
            "use_sliding_window = true: attention is over the whole window",
        ),
        (
            "layer_types",
            serde_json::json!(["full_attention", "sliding_attention"]),
            "layer_types = sliding_attention: every layer's attention is full_attention",
        ),
        ("num_hidden_layers", serde_json::json!(0), "n_layers must be positive"),
    ] {
        let mut changed = config.clone();
        changed[field] = value;
        let model = dir.path(field);
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), changed.to_string()).unwrap();
        std::fs::copy(source.join("model.safetensors"), model.join("model.safetensors")).unwrap();
        let err = load_model_file(&model, None).unwrap_err().to_string();
        assert!(err.contains(message), "{field}: {err}");
    }
    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("config.json"), text).unwrap();
    let err = load_model_file(&empty, None).unwrap_err().to_string();
    assert!(
        err.contains("no model.safetensors and no model.safetensors.index.json"),
        "{err}"
    );
}

#[test]
fn generate_and_train_take_a_folder_and_its_tokenizer() {
    let model = folder("llama").display().to_string();
    let out = anetrain(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "It is",
        "--max-tokens",
        "5",
    ]);
    ok(&out);
    assert!(stdout(&out).starts_with("It is"), "{}", stdout(&out));
    let dir = Dir::new();
    let run = dir.s("run");
    ok(&anetrain(&[
        "train", "--init", &model, "--steps", "2", "--out", &run, "--quiet",
    ]));
    let eval = anetrain(&["eval", "--checkpoint", &dir.s("run/ckpt-00000002.bin")]);
    ok(&eval);
}

/// `eval --model DIR` on a token file of one 64-token window (the folder's context) gives the
/// loss the host decoder computes for it: the kernels and the decoder are separate code.
#[test]
fn eval_takes_a_folder_and_gives_the_decoders_loss() {
    let dir_model = folder("llama");
    let params = load_model_file(&dir_model, None).unwrap();
    let ids: Vec<u32> = (0..65u32).map(|i| (i * 37 + 11) % 300).collect();
    let dir = Dir::new();
    let tokens = dir.path("window.bin");
    anetrain_train::data::token_file::write_token_file(&tokens, &ids, 300).unwrap();
    let mut decoder = Decoder::new(&params);
    let logits: Vec<Vec<f32>> = ids[..64].iter().map(|&id| decoder.step(id)).collect();
    let want = next_token_loss(&logits, &ids);
    let out = anetrain(&[
        "eval",
        "--model",
        &dir_model.display().to_string(),
        "--data",
        &tokens.display().to_string(),
    ]);
    ok(&out);
    let text = stdout(&out);
    let got: f64 = text
        .strip_prefix("mean loss ")
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        (got - want).abs() < 1e-3,
        "eval {got} against the decoder's {want}: {text}"
    );
    assert!(text.contains("over 1 windows of 64 tokens"), "{text}");
}

/// Trains the fixture `model` for two steps in `dir/run`; the checkpoint's path.
fn fine_tuned(model: &std::path::Path, dir: &Dir) -> String {
    ok(&anetrain(&[
        "train",
        "--init",
        &model.display().to_string(),
        "--steps",
        "2",
        "--out",
        &dir.s("run"),
        "--quiet",
    ]));
    dir.s("run/ckpt-00000002.bin")
}

/// `export --format hf` of `checkpoint` to `to`.
fn export_folder(checkpoint: &str, to: &std::path::Path) -> std::process::Output {
    anetrain(&[
        "export",
        "--checkpoint",
        checkpoint,
        "--format",
        "hf",
        "--output",
        &to.display().to_string(),
    ])
}

/// A trained checkpoint exported as a folder reads back to the checkpoint's weights, keeps the
/// tokenizer files it started from, and generates what the checkpoint generates.
#[test]
fn an_exported_folder_holds_the_checkpoints_model_and_tokenizer() {
    let source = folder("llama");
    let dir = Dir::new();
    let checkpoint = fine_tuned(&source, &dir);
    let out = dir.path("exported");
    let export = |to: &std::path::Path| export_folder(&checkpoint, to);
    ok(&export(&out));
    let ckpt =
        anetrain_train::checkpoint::Checkpoint::load(std::path::Path::new(&checkpoint)).unwrap();
    let back = load_model_file(&out, None).unwrap();
    // The checkpoint's model in every field; a folder's model is named after the folder.
    let want = anetrain_model::ModelConfig {
        name: "exported".into(),
        ..ckpt.header.config.clone()
    };
    assert_eq!(back.layout.config, want);
    assert_eq!(back.data, ckpt.params.data, "the weights, bit for bit");
    assert_ne!(
        back.data,
        load_model_file(&source, None).unwrap().data,
        "two steps changed the weights"
    );
    // The tokenizer files are the folder's own: its configuration byte for byte, and the same
    // vocabulary, merges and special tokens.
    let read_json = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert_eq!(
        std::fs::read(out.join("tokenizer_config.json")).unwrap(),
        std::fs::read(source.join("tokenizer_config.json")).unwrap()
    );
    let (ours, theirs) = (
        read_json(out.join("tokenizer.json")),
        read_json(source.join("tokenizer.json")),
    );
    for key in ["model", "added_tokens", "pre_tokenizer", "decoder"] {
        assert_eq!(ours[key], theirs[key], "tokenizer.json: {key}");
    }
    let config = read_json(out.join("config.json"));
    let original = read_json(source.join("config.json"));
    // Every field of the base's config.json is kept, with the same value.
    for (key, value) in original.as_object().unwrap() {
        assert_eq!(&config[key], value, "{key}");
    }
    assert_eq!(
        std::fs::read(out.join("generation_config.json")).unwrap(),
        std::fs::read(source.join("generation_config.json")).unwrap()
    );
    let generation = read_json(out.join("generation_config.json"));
    assert_eq!(
        (
            generation["bos_token_id"].as_u64(),
            generation["eos_token_id"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let generate = |what: &[&str]| {
        let mut args = vec!["generate", "--prompt", "It is", "--max-tokens", "12"];
        args.extend_from_slice(what);
        let o = anetrain(&args);
        ok(&o);
        stdout(&o)
    };
    assert_eq!(
        generate(&["--model", &out.display().to_string()]),
        generate(&["--checkpoint", &checkpoint])
    );

    // Exporting again replaces the earlier export (a desktop's .DS_Store does not stop it); a
    // folder with other files, or a model folder another tool saved, is left alone.
    std::fs::write(out.join(".DS_Store"), "finder").unwrap();
    ok(&export(&out));
    assert_eq!(load_model_file(&out, None).unwrap().data, ckpt.params.data);
    let base = dir.path("base");
    std::fs::create_dir_all(&base).unwrap();
    let names = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    for name in names {
        std::fs::copy(source.join(name), base.join(name)).unwrap();
    }
    let refused = export(&base);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("a model folder that anetrain did not export"),
        "{}",
        stderr(&refused)
    );
    for name in names {
        assert_eq!(
            std::fs::read(base.join(name)).unwrap(),
            std::fs::read(source.join(name)).unwrap()
        );
    }
    let notes = dir.path("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), "keep me").unwrap();
    let refused = export(&notes);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("holds `todo.txt`, which an export does not write"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read_to_string(notes.join("todo.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(&notes).unwrap().count(), 1);
    // No staging folder is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(anetrain_model::io::atomic::TEMP_PREFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A fine-tuned Qwen3 exports as a `Qwen3ForCausalLM` folder that reads back to its weights
/// and gives the checkpoint's loss under `eval`.
#[test]
fn a_qwen3_checkpoint_exports_as_a_qwen3_folder() {
    let dir = Dir::new();
    let checkpoint = fine_tuned(&folder("qwen3"), &dir);
    let out = dir.path("exported");
    ok(&export_folder(&checkpoint, &out));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(config["model_type"], "qwen3");
    assert_eq!(config["tie_word_embeddings"], true);
    let ckpt =
        anetrain_train::checkpoint::Checkpoint::load(std::path::Path::new(&checkpoint)).unwrap();
    let back = load_model_file(&out, None).unwrap();
    assert!(back.layout.config.qk_norm);
    assert_eq!(back.data, ckpt.params.data);
    let eval = |source: &[&str]| {
        let mut args = vec!["eval"];
        args.extend_from_slice(source);
        let o = anetrain(&args);
        ok(&o);
        stdout(&o).split_whitespace().nth(2).unwrap().to_string()
    };
    assert_eq!(
        eval(&["--model", &out.display().to_string()]),
        eval(&["--checkpoint", &checkpoint])
    );
}

/// Each fixture exported with our writer and read back still gives transformers' logits: the
/// export keeps every tensor, in Hugging Face's order and permutation.
#[test]
fn an_export_of_each_fixture_reads_back_to_transformers_numbers() {
    let dir = Dir::new();
    for name in ["llama", "qwen3"] {
        let params = load_model_file(&folder(name), None).unwrap();
        let out = dir.path(name);
        anetrain_model::io::hf::write_folder(&out, &params, &Default::default()).unwrap();
        let back = load_model_file(&out, None).unwrap();
        assert_eq!(back.data, params.data, "{name}");
        // The fixture's logits and losses, read from the original folder.
        let (logits, loss) = errors_against_transformers(&folder(name), &back);
        assert!(
            logits <= 1e-4 && loss <= 1e-4,
            "{name}: logits {logits:e}, loss {loss:e}"
        );
    }
}

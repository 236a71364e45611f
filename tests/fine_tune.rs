//! Fine-tuning a Hugging Face folder on JSONL examples: resumed exactly, generated from, and
//! exported with the folder's chat template.

mod common;

use anetrain_model::io::load_model_file;
use anetrain_train::checkpoint::Checkpoint;
use common::*;
use std::path::{Path, PathBuf};

/// A short template: the fixture's tokenizer is nearly bytes, and its context 64 tokens.
const TEMPLATE: &str = "{% for m in messages %}{{ '<' + m.role[0] + '>' + m.content + '\\n' }}\
                        {% endfor %}{% if add_generation_prompt %}{{ '<a>' }}{% endif %}";

/// The llama fixture with a chat template in its tokenizer_config.json.
fn chat_model(dir: &Dir) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let model = dir.path("model");
    std::fs::create_dir_all(&model).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(source.join(name), model.join(name)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("tokenizer_config.json")).unwrap())
            .unwrap();
    config["chat_template"] = TEMPLATE.into();
    std::fs::write(model.join("tokenizer_config.json"), config.to_string()).unwrap();
    model
}

/// A data folder of the three kinds of rows, with a validation file.
fn data(dir: &Dir) -> PathBuf {
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let row = |i: usize| match i % 3 {
        0 => {
            serde_json::json!({"prompt": format!("What is {i} and {i}?"), "completion": format!(" {}.", 2 * i)})
        }
        1 => serde_json::json!({"messages": [
            {"role": "user", "content": format!("2*{i}")},
            {"role": "assistant", "content": format!("{}", 2 * i)}]}),
        _ => serde_json::json!({"text": format!("{i}+{i}={}", 2 * i)}),
    };
    let lines = |range: std::ops::Range<usize>| {
        range.map(|i| row(i).to_string() + "\n").collect::<String>()
    };
    std::fs::write(data.join("train.jsonl"), lines(0..60)).unwrap();
    std::fs::write(data.join("valid.jsonl"), lines(60..70)).unwrap();
    data
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_fine_tune_resumes_exactly_generates_and_exports_with_its_chat_template() {
    let dir = Dir::new();
    let (model, data) = (s(&chat_model(&dir)), s(&data(&dir)));
    let train = |out: &str, more: &[&str]| {
        let mut args = vec![
            "train",
            "--init",
            &model,
            "--data",
            &data,
            "--mask-prompt",
            "--steps",
            "6",
            "--out",
            out,
            "--threads",
            "1",
            // Reproducible whatever the timing, so that the resumed run can be compared bit
            // for bit (a double buffer's weight versions depend on when compiles finish).
            "--weights",
            "recompile",
        ];
        args.extend_from_slice(more);
        anetrain(&args)
    };
    let whole = train(&dir.s("whole"), &[]);
    ok(&whole);
    let text = stdout(&whole);
    assert!(
        text.contains("60 examples of")
            && text.contains("conversations by the chat template")
            && !text.contains("truncated"),
        "{text}"
    );
    ok(&train(&dir.s("parts"), &["--stop-after", "3", "--quiet"]));
    // A resumed run keeps its windows: another packing, or edited examples, are refused.
    let parts = dir.s("parts");
    let resume = |more: &[&str]| {
        let mut args = vec!["train", "--resume", "--out", &parts, "--quiet"];
        args.extend_from_slice(more);
        anetrain(&args)
    };
    let repacked = resume(&["--no-pack"]);
    assert!(!repacked.status.success());
    assert!(
        stderr(&repacked).contains("--no-pack (pack): the resumed run made its windows otherwise"),
        "{}",
        stderr(&repacked)
    );
    let train_file = Path::new(&data).join("train.jsonl");
    let original = std::fs::read_to_string(&train_file).unwrap();
    std::fs::write(&train_file, original.replacen("2*1", "2*9", 1)).unwrap();
    let edited = resume(&[]);
    assert!(!edited.status.success());
    assert!(
        stderr(&edited).contains("do not make the windows the checkpoint drew from"),
        "{}",
        stderr(&edited)
    );
    std::fs::write(&train_file, original).unwrap();
    ok(&resume(&["--mask-prompt"]));
    let a = Checkpoint::load(&dir.path("whole/ckpt-00000006.bin")).unwrap();
    let b = Checkpoint::load(&dir.path("parts/ckpt-00000006.bin")).unwrap();
    assert_eq!(
        a.params.data, b.params.data,
        "a resumed fine-tune ends on the same weights"
    );
    assert_ne!(
        a.params.data,
        load_model_file(Path::new(&model), None).unwrap().data
    );
    // The checkpoint keeps the chat template; the export writes it back.
    assert!(a
        .header
        .tokenizer_config
        .as_deref()
        .unwrap()
        .contains("add_generation_prompt"));
    let exported = dir.path("exported");
    ok(&anetrain(&[
        "export",
        "--checkpoint",
        &dir.s("whole/ckpt-00000006.bin"),
        "--format",
        "hf",
        "--output",
        &s(&exported),
    ]));
    assert_eq!(
        std::fs::read(exported.join("tokenizer_config.json")).unwrap(),
        std::fs::read(Path::new(&model).join("tokenizer_config.json")).unwrap()
    );
    assert_eq!(
        load_model_file(&exported, None).unwrap().data,
        a.params.data
    );
    let generate = |source: &[&str]| {
        let mut args = vec!["generate", "--prompt", "2*4", "--max-tokens", "8"];
        args.extend_from_slice(source);
        let o = anetrain(&args);
        ok(&o);
        stdout(&o)
    };
    assert_eq!(
        generate(&["--checkpoint", &dir.s("whole/ckpt-00000006.bin")]),
        generate(&["--model", &s(&exported)])
    );
    // eval scores the run's validation examples as the run did, masked as it trained; the
    // same examples given as a file, or the exported folder on them, score the same.
    let loss_in = |text: &str, marker: &str| -> f64 {
        let at = text
            .rfind(marker)
            .unwrap_or_else(|| panic!("{marker} in {text}"));
        text[at + marker.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{text}"))
    };
    let trained = loss_in(&text, "validation loss ");
    let eval = |args: &[&str]| {
        let mut all = vec!["eval"];
        all.extend_from_slice(args);
        let o = anetrain(&all);
        ok(&o);
        loss_in(&stdout(&o), "mean loss ")
    };
    let checkpoint = dir.s("whole/ckpt-00000006.bin");
    assert!(
        (eval(&["--checkpoint", &checkpoint]) - trained).abs() < 1e-4,
        "{trained}"
    );
    let valid = Path::new(&data).join("valid.jsonl").display().to_string();
    assert!((eval(&["--checkpoint", &checkpoint, "--data", &valid]) - trained).abs() < 1e-4);
    let exported_dir = s(&exported);
    let by_model = eval(&["--model", &exported_dir, "--data", &data, "--mask-prompt"]);
    assert!(
        (by_model - trained).abs() < 1e-4,
        "{by_model} against {trained}"
    );
    let unmasked = eval(&["--model", &exported_dir, "--data", &data]);
    assert!(
        (unmasked - trained).abs() > 1e-3,
        "the mask changes what is scored"
    );
    // As a chat: the prompt goes through the template and only the answer is printed.
    let checkpoint_chat = generate(&["--chat", "--checkpoint", &dir.s("whole/ckpt-00000006.bin")]);
    assert!(!checkpoint_chat.contains("2*4"), "{checkpoint_chat}");
    assert_eq!(
        checkpoint_chat,
        generate(&["--chat", "--model", &s(&exported)])
    );
}

#[test]
fn example_flags_need_examples_and_a_long_example_can_be_refused_by_line() {
    let dir = Dir::new();
    let (model_dir, data_dir) = (chat_model(&dir), data(&dir));
    let (model, data) = (s(&model_dir), s(&data_dir));
    let out = anetrain(&[
        "train",
        "--mask-prompt",
        "--steps",
        "1",
        "--out",
        &dir.s("r"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--mask-prompt (mask_prompt) applies to fine-tuning examples")
            && stderr(&out).contains("not to the embedded corpus"),
        "{}",
        stderr(&out)
    );
    let mut train = std::fs::read_to_string(data_dir.join("train.jsonl")).unwrap();
    train.push_str(&format!("{{\"text\": \"{}\"}}\n", "many words ".repeat(40)));
    std::fs::write(data_dir.join("train.jsonl"), train).unwrap();
    let run = |more: &[&str]| {
        let mut args = vec![
            "train", "--init", &model, "--data", &data, "--steps", "1", "--quiet",
        ];
        args.extend_from_slice(more);
        anetrain(&args)
    };
    let refused = run(&["--long-examples", "refuse", "--out", &dir.s("r1")]);
    assert!(!refused.status.success());
    let want = format!("{}:61: ", s(&data_dir.join("train.jsonl")));
    assert!(
        stderr(&refused).contains(&want) && stderr(&refused).contains("longer than a window of 65"),
        "{}",
        stderr(&refused)
    );
    // Truncated by default, and said so.
    let truncated = run(&["--out", &dir.s("r2")]);
    ok(&truncated);
    let bad = dir.path("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"fine\"}\n{\"prompt\": \"no completion\"}\n",
    )
    .unwrap();
    let out = anetrain(&[
        "train",
        "--init",
        &model,
        "--data",
        &s(&bad),
        "--steps",
        "1",
        "--out",
        &dir.s("r3"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{}:2: `completion` is missing", s(&bad))),
        "{}",
        stderr(&out)
    );
}

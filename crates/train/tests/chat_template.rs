//! Chat templates rendered as transformers renders them: `tests/fixtures/chat/rendered.json`
//! holds what transformers' `apply_chat_template` made of conversations with
//! `template.jinja` (`make_fixture.py`, run once; CI needs no Python).

use anetrain_train::data::chat::ChatTemplate;
use anetrain_train::data::examples::ExampleEncoder;
use anetrain_train::tokenizer::{Tokenizer, TokenizerConfig};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn template() -> String {
    std::fs::read_to_string(fixture("chat/template.jinja")).unwrap()
}

#[test]
fn conversations_render_as_transformers_renders_them() {
    let rendered: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("chat/rendered.json")).unwrap()).unwrap();
    let t = ChatTemplate::new(&template(), "<s>", "</s>").unwrap();
    let cases = rendered["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let messages = case["messages"].as_array().unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let want = case["text"].as_str().unwrap();
        assert_eq!(t.render(messages, add).unwrap(), want, "{messages:?} {add}");
    }
    let err = t
        .render(
            &[serde_json::json!({"role": "tool", "content": "x"})],
            false,
        )
        .unwrap_err();
    assert!(err.contains("unknown role tool"), "{err}");
}

/// With the fixture's template, masking finds the assistant's answer turn by turn; where the
/// template drops earlier turns' reasoning (as Qwen3's does), by the answers' text.
#[test]
fn masking_through_a_published_style_template() {
    let Tokenizer::HuggingFace(base) =
        Tokenizer::load(&fixture("hf/llama/tokenizer.json")).unwrap()
    else {
        unreachable!("a tokenizer.json")
    };
    let config =
        serde_json::json!({"chat_template": template(), "bos_token": "<s>", "eos_token": "</s>"});
    let config = TokenizerConfig::parse(&config.to_string(), "fixture").unwrap();
    let t = Tokenizer::HuggingFace(base.with_config(config, "fixture").unwrap());
    let encoder = ExampleEncoder::new(&t, true).unwrap();
    let line = serde_json::json!({"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Who wrote Emma?"},
        {"role": "assistant", "content": "Jane Austen."},
    ]});
    // The text of the tokens trained on in the example of `line`.
    let trained_text = |line: serde_json::Value| {
        let e = encoder.encode_line(&line.to_string()).unwrap();
        let trained: Vec<u32> = e
            .tokens
            .iter()
            .zip(&e.trained)
            .filter(|(_, &f)| f)
            .map(|(&id, _)| id)
            .collect();
        t.decode(&trained).unwrap()
    };
    assert_eq!(trained_text(line), "Jane Austen.<|im_end|>\n");
    let reasoning = serde_json::json!({"messages": [
        {"role": "user", "content": "Two plus two?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nFour."},
        {"role": "user", "content": "And three more?"},
        {"role": "assistant", "content": "Seven."},
    ]});
    assert_eq!(trained_text(reasoning), "Four.Seven.");
}

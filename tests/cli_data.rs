//! `anetrain tokenizer train` and `anetrain data prepare|info` end to end: the binary on real
//! files, good and bad; a failed command exits non-zero and leaves no file behind.

mod common;

use anetrain_train::data::{read_token_file, TokenFormat};
use anetrain_train::tokenizer::llama2c::{byte_piece, Llama2cTokenizer};
use anetrain_train::tokenizer::Tokenizer;
use common::*;

/// A few hundred lines of varied text, non-ASCII included.
fn corpus() -> String {
    (0..400)
        .map(|i| {
            format!(
                "Line {i}: the quick brown fox jumps over the lazy dog; café №{} — ok.\n",
                i * 7
            )
        })
        .collect()
}

#[test]
fn train_a_tokenizer_then_prepare_and_read_back_tokens() {
    let dir = Dir::new();
    let text = corpus();
    let input = dir.write("corpus.txt", &text);
    let out = anetrain(&[
        "tokenizer",
        "train",
        "--input",
        &input,
        "--vocab",
        "300",
        "--output",
        &dir.s("tok.json"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("trained a 300-token byte-level BPE"),
        "{}",
        stdout(&out)
    );
    let tokenizer = Tokenizer::load(&dir.path("tok.json")).unwrap();
    assert_eq!(tokenizer.vocab_size(), 300);

    let out = anetrain(&[
        "data",
        "prepare",
        "--tokenizer",
        &dir.s("tok.json"),
        "--input",
        &input,
        "--output",
        &dir.s("tokens.bin"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = tokenizer.encode(&text).unwrap();
    let tokens = read_token_file(&dir.path("tokens.bin"), 300).unwrap();
    assert_eq!(tokens.format(), TokenFormat::U16);
    assert_eq!(tokens.to_vec(), expected);
    assert_eq!(tokenizer.decode(&tokens.to_vec()).unwrap(), text);
    assert!(
        stdout(&out).starts_with(&format!(
            "wrote {} tokens (uint16, vocabulary 300)",
            expected.len()
        )),
        "{}",
        stdout(&out)
    );

    let out = anetrain(&["data", "info", &dir.s("tokens.bin"), "--vocab", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("uint16, {} tokens, ids ", expected.len())),
        "{}",
        stdout(&out)
    );
    assert_eq!(dir.entries(), ["corpus.txt", "tok.json", "tokens.bin"]);
}

#[test]
fn prepare_with_a_llama2c_tokenizer() {
    let dir = Dir::new();
    let mut pieces: Vec<(Vec<u8>, f32)> = vec![
        (b"<unk>".to_vec(), 0.0),
        (b"\n<s>\n".to_vec(), 0.0),
        (b"\n</s>\n".to_vec(), 0.0),
    ];
    pieces.extend((0..=255u8).map(|b| (byte_piece(b).into_bytes(), 0.0)));
    for (p, s) in [
        (" ", -1e3),
        ("h", -1e3),
        ("i", -1e3),
        ("hi", 1.0),
        (" hi", 2.0),
    ] {
        pieces.push((p.as_bytes().to_vec(), s));
    }
    let llama = Tokenizer::Llama2c(Llama2cTokenizer::new(pieces).unwrap());
    llama.save(&dir.path("tokenizer.bin")).unwrap();
    let input = dir.write("in.txt", "hi hi!");
    let out = anetrain(&[
        "data",
        "prepare",
        "--tokenizer",
        &dir.s("tokenizer.bin"),
        "--input",
        &input,
        "--output",
        &dir.s("t.bin"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // " hi hi!": " hi" (2.0) twice, "!" by its byte token 0x21 + 3.
    assert_eq!(
        read_token_file(&dir.path("t.bin"), 264).unwrap().to_vec(),
        [263, 263, 0x21 + 3]
    );
}

#[test]
fn prepare_defaults_to_the_tiny_tokenizer_and_the_embedded_corpus() {
    let dir = Dir::new();
    let out = anetrain(&["data", "prepare", "--output", &dir.s("austen.bin")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens = read_token_file(&dir.path("austen.bin"), 1024).unwrap();
    assert!(tokens.len() > 1_000_000, "{} tokens", tokens.len());
    assert!(
        stdout(&out).contains("(uint16, vocabulary 1024)")
            && stdout(&out).contains("4025029 bytes of text"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn failures_exit_non_zero_and_write_nothing() {
    let dir = Dir::new();
    let input = dir.write("corpus.txt", corpus());
    let broken = dir.write("broken.json", "{\"model\": ");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "data".into(),
                "prepare".into(),
                "--input".into(),
                dir.s("absent.txt"),
            ],
            format!("cannot read text file {}", dir.s("absent.txt")),
        ),
        (
            vec![
                "data".into(),
                "prepare".into(),
                "--tokenizer".into(),
                broken.clone(),
                "--input".into(),
                input.clone(),
            ],
            format!("{broken}: "),
        ),
        (
            vec![
                "data".into(),
                "prepare".into(),
                "--input".into(),
                dir.write("empty.txt", ""),
            ],
            "empty.txt: no text".into(),
        ),
        (
            vec![
                "tokenizer".into(),
                "train".into(),
                "--input".into(),
                input.clone(),
                "--vocab".into(),
                "10".into(),
            ],
            "a vocabulary of 10 is smaller than the 259 base tokens".into(),
        ),
        (
            vec![
                "tokenizer".into(),
                "train".into(),
                "--input".into(),
                dir.write("bad.txt", b"\xff\xfe"),
            ],
            "cannot read text file".into(),
        ),
    ];
    for (mut args, message) in cases {
        let output = dir.s("out.json");
        args.extend([
            "--output".into(),
            output.replace(".json", if args[0] == "data" { ".bin" } else { ".json" }),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = anetrain(&refs);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains(&message),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(
            dir.entries()
                .iter()
                .all(|n| !n.starts_with("out") && !n.starts_with('.')),
            "{args:?} left {:?}",
            dir.entries()
        );
    }
    let out = anetrain(&["tokenizer", "train", "--output", &dir.s("tok.bin")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("give it a .json name"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path("tok.bin").exists());
}

#[test]
fn info_reports_a_truncated_file() {
    let dir = Dir::new();
    let path = dir.write("odd.bin", [1u8, 0, 2]);
    let out = anetrain(&["data", "info", &path]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{path}: truncated: 3 bytes")),
        "{}",
        stderr(&out)
    );
}

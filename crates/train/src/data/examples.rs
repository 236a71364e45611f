//! Fine-tuning data: JSONL files of examples as mlx-lm takes them, tokenized with the tokens
//! to train on marked, and packed into windows.
//!
//! A row is one of
//! - `{"text": "..."}`: trained on whole;
//! - `{"prompt": "...", "completion": "..."}`: a user turn and the assistant's answer;
//! - `{"messages": [{"role": "...", "content": "..."}, ...]}`: a conversation.
//!
//! Conversations (and prompt/completion pairs) are rendered by the tokenizer's chat template
//! when it has one. Without one, a conversation is rendered as `role: content` lines, each
//! assistant turn ended by the EOS token, and a prompt/completion pair as the prompt followed
//! by the completion and EOS. A text gets EOS at the end, and BOS in front where the
//! tokenizer's own encoding puts one ([`Tokenizer::adds_bos`]). With `mask_prompt`, only completions and assistant turns (with what closes them)
//! are targets.
//!
//! Windows hold `seq_len + 1` tokens. Examples are packed whole into windows in file order,
//! as many as fit; the rest of a window is padding, which is never a target, nor is the
//! first token of an example (nothing before it in the window predicts it). Attention is
//! causal over the whole window: a packed example sees the ones before it in its window.

use super::chat::ChatTemplate;
use super::{DataError, ValidationSource, NOT_A_TARGET};
use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What to do with an example longer than a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LongExamples {
    /// Keep its first `seq_len + 1` tokens.
    Truncate,
    /// Refuse the data, naming the file and line.
    Refuse,
}

impl std::str::FromStr for LongExamples {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "truncate" => Ok(LongExamples::Truncate),
            "refuse" => Ok(LongExamples::Refuse),
            _ => Err(format!(
                "long examples: `{s}` is not `truncate` or `refuse`"
            )),
        }
    }
}

/// How examples become windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExampleOptions {
    /// Train only on completions and assistant turns.
    pub mask_prompt: bool,
    /// Several examples per window (else one, padded).
    pub pack: bool,
    pub long_examples: LongExamples,
}

impl Default for ExampleOptions {
    fn default() -> Self {
        ExampleOptions {
            mask_prompt: false,
            pack: true,
            long_examples: LongExamples::Truncate,
        }
    }
}

/// A piece of an example before tokenization: text, or a special token by id.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Token(u32),
}

/// A piece and whether its tokens are targets.
type Part = (Piece, bool);

/// One row's tokens and, for each, whether it is a target.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub trained: Vec<bool>,
}

/// Turns rows into token sequences with one tokenizer and its chat template.
pub struct ExampleEncoder<'t> {
    tokenizer: &'t Tokenizer,
    template: Option<ChatTemplate>,
    mask_prompt: bool,
    /// BOS, where the tokenizer's own tools would put it in front of a text.
    bos: Option<u32>,
    /// The texts of the tokens that end a turn, for finding where an answer ends.
    turn_ends: Vec<String>,
}

impl<'t> ExampleEncoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer, mask_prompt: bool) -> Result<Self, DataError> {
        let name = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
        };
        let template = match tokenizer.config().and_then(|c| c.chat_template.as_deref()) {
            Some(t) => Some(
                ChatTemplate::new(t, &name(tokenizer.bos_id()), &name(tokenizer.eos_id()))
                    .map_err(|e| DataError::Invalid(format!("tokenizer_config.json: {e}")))?,
            ),
            None => None,
        };
        let turn_ends = tokenizer
            .end_of_turn_ids()
            .into_iter()
            .filter_map(|id| tokenizer.token_text(id))
            .collect();
        Ok(ExampleEncoder {
            tokenizer,
            template,
            mask_prompt,
            bos: tokenizer.bos_id().filter(|_| tokenizer.adds_bos()),
            turn_ends,
        })
    }

    /// Whether conversations go through the tokenizer's chat template.
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// The example of one JSONL line; the error says what is wrong with it (the caller adds
    /// the file and line).
    pub fn encode_line(&self, line: &str) -> Result<Example, String> {
        let row: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let parts = self.parts(&row)?;
        self.tokenize(&parts)
    }

    fn parts(&self, row: &Value) -> Result<Vec<Part>, String> {
        let Value::Object(fields) = row else {
            return Err("a row must be a JSON object".into());
        };
        let string = |key: &str| -> Result<String, String> {
            match fields.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!("`{key}` must be a string, not {other}")),
                None => Err(format!("`{key}` is missing")),
            }
        };
        if let Some(messages) = fields.get("messages") {
            let Value::Array(messages) = messages else {
                return Err("`messages` must be a list".into());
            };
            for (i, m) in messages.iter().enumerate() {
                for key in ["role", "content"] {
                    if !m.get(key).is_some_and(Value::is_string) {
                        return Err(format!("messages[{i}] has no string `{key}`"));
                    }
                }
            }
            if messages.is_empty() {
                return Err("`messages` is empty".into());
            }
            return self.chat(messages);
        }
        if fields.contains_key("prompt") || fields.contains_key("completion") {
            let (prompt, completion) = (string("prompt")?, string("completion")?);
            if self.template.is_some() {
                let messages = [
                    serde_json::json!({"role": "user", "content": prompt}),
                    serde_json::json!({"role": "assistant", "content": completion}),
                ];
                return self.chat(&messages);
            }
            let mut parts = self.bos();
            parts.push((Piece::Text(prompt), false));
            parts.push((Piece::Text(completion), true));
            parts.extend(self.eos());
            return Ok(parts);
        }
        if fields.contains_key("text") {
            let mut parts = self.bos();
            parts.push((Piece::Text(string("text")?), true));
            parts.extend(self.eos());
            return Ok(parts);
        }
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        Err(format!(
            "a row needs `text`, `prompt` and `completion`, or `messages`; it has {}",
            if keys.is_empty() {
                "no fields".to_string()
            } else {
                format!("only `{}`", keys.join("`, `"))
            }
        ))
    }

    /// The tokens that prompt the model for the assistant's next turn after `messages`: the
    /// template's text with its generation prompt, or without a template the `role: content`
    /// lines and `assistant: `.
    pub fn chat_prompt(&self, messages: &[Value]) -> Result<Vec<u32>, String> {
        let parts = match &self.template {
            Some(template) => vec![(Piece::Text(template.render(messages, true)?), false)],
            None => {
                let mut parts = self.plain_chat(messages);
                parts.push((Piece::Text("assistant: ".into()), false));
                parts
            }
        };
        Ok(self.tokenize(&parts)?.tokens)
    }

    fn bos(&self) -> Vec<Part> {
        self.bos
            .map(|id| (Piece::Token(id), false))
            .into_iter()
            .collect()
    }

    fn eos(&self) -> Option<Part> {
        self.tokenizer.eos_id().map(|id| (Piece::Token(id), true))
    }

    /// A conversation's parts: each assistant turn trained, the rest not.
    fn chat(&self, messages: &[Value]) -> Result<Vec<Part>, String> {
        let Some(template) = &self.template else {
            return Ok(self.plain_chat(messages));
        };
        let whole = template.render(messages, false)?;
        // Without masking there is nothing to locate.
        if !self.mask_prompt {
            return Ok(vec![(Piece::Text(whole), true)]);
        }
        match self.turn_by_turn(template, messages, &whole)? {
            Some(parts) => Ok(parts),
            None => self.by_content(messages, whole),
        }
    }

    /// The parts of a conversation where the template renders it turn by turn: an assistant
    /// turn is what rendering it adds to the conversation before it with the opening of an
    /// assistant turn. None when a render does not begin with the one before.
    fn turn_by_turn(
        &self,
        template: &ChatTemplate,
        messages: &[Value],
        whole: &str,
    ) -> Result<Option<Vec<Part>>, String> {
        let mut parts = Vec::new();
        let mut done = String::new();
        let mut renders = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m["role"] == "assistant" {
                renders.push((template.render(&messages[..i], true)?, false));
                renders.push((template.render(&messages[..=i], false)?, true));
            }
        }
        renders.push((whole.to_string(), false));
        for (text, trained) in renders {
            let Some(added) = text.strip_prefix(done.as_str()) else {
                return Ok(None);
            };
            parts.push((Piece::Text(added.to_string()), trained));
            done = text;
        }
        Ok(Some(parts))
    }

    /// The parts of a conversation whose template does not render it turn by turn (Qwen3's
    /// drops earlier answers' reasoning and gives the last answer an empty `<think>` block): each
    /// assistant message's text, found in order in the whole rendering, with the end-of-turn
    /// token that follows it, is trained. A message's reasoning (`<think>…</think>`) is
    /// looked for without it, as such templates render it.
    fn by_content(&self, messages: &[Value], whole: String) -> Result<Vec<Part>, String> {
        let mut parts = Vec::new();
        let mut at = 0;
        for (k, m) in messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m["role"] == "assistant")
        {
            let content = m["content"].as_str().unwrap_or_default();
            let answer = content.rsplit("</think>").next().unwrap_or(content);
            let found = [
                content,
                answer.trim_start_matches('\n'),
                content.trim(),
                answer.trim(),
            ]
            .into_iter()
            .filter(|c| !c.is_empty())
            .find_map(|c| whole[at..].find(c).map(|i| (at + i, c.len())));
            let Some((start, len)) = found else {
                return Err(format!(
                    "the chat template does not render the conversation turn by turn, and the \
                     text of messages[{k}] is not in its rendering, so the assistant's tokens \
                     cannot be told apart: train without --mask-prompt"
                ));
            };
            let mut end = start + len;
            if let Some(close) = self
                .turn_ends
                .iter()
                .find(|e| whole[end..].starts_with(e.as_str()))
            {
                end += close.len();
            }
            parts.push((Piece::Text(whole[at..start].to_string()), false));
            parts.push((Piece::Text(whole[start..end].to_string()), true));
            at = end;
        }
        parts.push((Piece::Text(whole[at..].to_string()), false));
        Ok(parts)
    }

    /// The documented rendering without a template: `role: content` lines, each assistant
    /// turn closed by EOS.
    fn plain_chat(&self, messages: &[Value]) -> Vec<Part> {
        let mut parts = self.bos();
        for m in messages {
            let (role, content) = (
                m["role"].as_str().unwrap_or_default(),
                m["content"].as_str().unwrap_or_default(),
            );
            let assistant = role == "assistant";
            parts.push((Piece::Text(format!("{role}: ")), false));
            parts.push((Piece::Text(content.to_string()), assistant));
            if assistant {
                parts.extend(self.eos());
            }
            parts.push((Piece::Text("\n".into()), false));
        }
        parts
    }

    /// Tokens of `parts`, each marked with its part's flag (every flag set without masking).
    /// Consecutive texts are encoded as one text, so that a Hugging Face tokenizer sees the
    /// text a chat template rendered, and a token is trained if any of its bytes is in a
    /// trained part (` Austen` after a prompt ending in a space is the completion's); a
    /// llama2.c tokenizer encodes each part alone.
    fn tokenize(&self, parts: &[Part]) -> Result<Example, String> {
        let mut example = Example {
            tokens: Vec::new(),
            trained: Vec::new(),
        };
        let mut i = 0;
        while i < parts.len() {
            match (&parts[i].0, self.tokenizer) {
                (Piece::Token(id), _) => {
                    example.tokens.push(*id);
                    example.trained.push(parts[i].1 || !self.mask_prompt);
                    i += 1;
                }
                (Piece::Text(t), Tokenizer::Llama2c(_)) => {
                    let ids = self.tokenizer.encode(t).map_err(|e| e.to_string())?;
                    example
                        .trained
                        .extend(ids.iter().map(|_| parts[i].1 || !self.mask_prompt));
                    example.tokens.extend(ids);
                    i += 1;
                }
                (Piece::Text(_), Tokenizer::HuggingFace(hf)) => {
                    let mut text = String::new();
                    let mut ranges = Vec::new();
                    while let Some((Piece::Text(t), trained)) = parts.get(i) {
                        ranges.push((text.len()..text.len() + t.len(), *trained));
                        text.push_str(t);
                        i += 1;
                    }
                    let (ids, spans) = hf.encode_with_spans(&text).map_err(|e| e.to_string())?;
                    for (id, span) in ids.into_iter().zip(spans) {
                        // An empty span (a token the normalizer added) counts at its start.
                        let end = span.end.max(span.start + 1);
                        let trained = ranges
                            .iter()
                            .any(|(r, t)| *t && r.start < end && span.start < r.end);
                        example.tokens.push(id);
                        example.trained.push(trained || !self.mask_prompt);
                    }
                }
            }
        }
        Ok(example)
    }
}

/// Fine-tuning examples packed into windows: the training windows and the validation ones,
/// each `seq_len + 1` tokens, a token flagged [`NOT_A_TARGET`] where it is not one.
#[derive(Clone, Debug)]
pub struct ExampleSet {
    source: String,
    window_len: usize,
    train: Vec<u32>,
    valid: Vec<u32>,
    /// Examples read, how many of them were cut to a window, and how many were left out with
    /// no target (a truncation that kept only a masked prompt).
    pub examples: usize,
    pub truncated: usize,
    pub dropped: usize,
    /// Whether conversations went through the tokenizer's chat template.
    pub templated: bool,
    /// CRC-32 of every window's tokens and flags: a resumed run checks that its examples make
    /// the windows its checkpoint was drawing from.
    pub fingerprint: u32,
}

/// The files of a data folder, as mlx-lm names them.
pub const TRAIN_FILE: &str = "train.jsonl";
pub const VALID_FILE: &str = "valid.jsonl";

impl ExampleSet {
    /// Whether `path` is fine-tuning data: a `.jsonl` file, or a folder with `train.jsonl`.
    pub fn is_examples(path: &Path) -> bool {
        path.extension().is_some_and(|e| e == "jsonl") || path.join(TRAIN_FILE).is_file()
    }

    /// Reads `path` (a folder with `train.jsonl` and, optionally, `valid.jsonl`, or one JSONL
    /// file) and packs it into windows of `seq_len + 1` tokens. Without a validation file the
    /// last 5 % of the training windows (at least one) validate, if there are two or more.
    pub fn open(
        path: &Path,
        tokenizer: &Tokenizer,
        seq_len: usize,
        options: ExampleOptions,
    ) -> Result<ExampleSet, DataError> {
        let (train_path, valid_path) = if path.is_dir() {
            let valid = path.join(VALID_FILE);
            (path.join(TRAIN_FILE), valid.is_file().then_some(valid))
        } else {
            (path.to_path_buf(), None)
        };
        let encoder = ExampleEncoder::new(tokenizer, options.mask_prompt)?;
        let window_len = seq_len + 1;
        let mut packer = Packer::new(window_len, options, tokenizer.eos_id().unwrap_or(0));
        read_examples(&train_path, &encoder, &mut packer)?;
        let (mut train, counts) = packer.finish();
        if train.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: no example with a token to train on",
                train_path.display()
            )));
        }
        let valid = match &valid_path {
            Some(v) => {
                let mut packer = Packer::new(window_len, options, tokenizer.eos_id().unwrap_or(0));
                read_examples(v, &encoder, &mut packer)?;
                packer.finish().0
            }
            None => {
                let windows = train.len() / window_len;
                let held = if windows >= 2 {
                    (windows / 20).max(1)
                } else {
                    0
                };
                train.split_off((windows - held) * window_len)
            }
        };
        let mut crc = crc32fast::Hasher::new();
        for &t in train.iter().chain(&valid) {
            crc.update(&t.to_le_bytes());
        }
        Ok(ExampleSet {
            source: train_path.display().to_string(),
            window_len,
            train,
            valid,
            examples: counts.examples,
            truncated: counts.truncated,
            dropped: counts.dropped,
            templated: encoder.has_template(),
            fingerprint: crc.finalize(),
        })
    }

    /// Every example of `path` (a JSONL file, or a folder's `valid.jsonl`, else its
    /// `train.jsonl`) packed into validation windows, for evaluating a model on all of them.
    pub fn open_whole(
        path: &Path,
        tokenizer: &Tokenizer,
        seq_len: usize,
        options: ExampleOptions,
    ) -> Result<ExampleSet, DataError> {
        let file = match path.is_dir() {
            true if path.join(VALID_FILE).is_file() => path.join(VALID_FILE),
            true => path.join(TRAIN_FILE),
            false => path.to_path_buf(),
        };
        let mut set = ExampleSet::open(&file, tokenizer, seq_len, options)?;
        let mut all = std::mem::take(&mut set.train);
        all.append(&mut set.valid);
        set.valid = all;
        Ok(set)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the set holds, for the line a run starts with.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} examples of {} in {} training and {} validation windows",
            self.examples,
            self.source,
            self.train_windows(),
            self.validation_window_count()
        );
        if self.truncated > 0 {
            text.push_str(&format!(", {} truncated to a window", self.truncated));
        }
        if self.dropped > 0 {
            text.push_str(&format!(
                ", {} left out with nothing to train on",
                self.dropped
            ));
        }
        text.push_str(if self.templated {
            ", conversations by the chat template"
        } else {
            ", conversations as `role: content` lines (no chat template)"
        });
        text
    }

    pub fn train_windows(&self) -> usize {
        self.train.len() / self.window_len
    }

    /// Tokens in the training windows and in the validation ones, padding included.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    pub fn val_len(&self) -> usize {
        self.valid.len()
    }

    /// Copies training window `i` into `out`.
    pub fn copy_train_window(&self, i: usize, out: &mut [u32]) -> Option<()> {
        let w = self
            .train
            .get(i * self.window_len..(i + 1) * self.window_len)?;
        out.get_mut(..self.window_len)?.copy_from_slice(w);
        Some(())
    }
}

impl ValidationSource for ExampleSet {
    /// Without validation windows, the training windows stand in.
    fn validation_window(&self, i: usize, out: &mut [u32]) {
        let source = if self.valid.is_empty() {
            &self.train
        } else {
            &self.valid
        };
        let n = source.len() / self.window_len;
        let i = i % n;
        out[..self.window_len]
            .copy_from_slice(&source[i * self.window_len..(i + 1) * self.window_len]);
    }

    fn validation_window_count(&self) -> usize {
        self.valid.len() / self.window_len
    }
}

/// Reads the JSONL file at `path` row by row into `packer`; blank lines are skipped.
fn read_examples(
    path: &Path,
    encoder: &ExampleEncoder,
    packer: &mut Packer,
) -> Result<(), DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let at = |line: usize, message: String| DataError::Example {
        path: PathBuf::from(path),
        line,
        message,
    };
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let example = encoder.encode_line(line).map_err(|m| at(n + 1, m))?;
        packer.add(example).map_err(|m| at(n + 1, m))?;
    }
    Ok(())
}

/// Packs examples into windows in order.
struct Packer {
    window_len: usize,
    options: ExampleOptions,
    pad: u32,
    windows: Vec<u32>,
    /// The window being filled.
    open: Vec<u32>,
    counts: PackCounts,
}

/// What a [`Packer`] did with the examples it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PackCounts {
    examples: usize,
    truncated: usize,
    dropped: usize,
}

impl Packer {
    fn new(window_len: usize, options: ExampleOptions, pad: u32) -> Packer {
        Packer {
            window_len,
            options,
            pad,
            windows: Vec::new(),
            open: Vec::with_capacity(window_len),
            counts: PackCounts::default(),
        }
    }

    fn add(&mut self, mut example: Example) -> Result<(), String> {
        let n = example.tokens.len();
        if n > self.window_len {
            if self.options.long_examples == LongExamples::Refuse {
                return Err(format!(
                    "{n} tokens, longer than a window of {} (the model's context + 1); \
                     shorten it, or pass --long-examples truncate to keep its first {}",
                    self.window_len, self.window_len
                ));
            }
            example.tokens.truncate(self.window_len);
            example.trained.truncate(self.window_len);
            self.counts.truncated += 1;
        }
        self.counts.examples += 1;
        // The first token is nobody's target; an example with no other target adds nothing.
        if !example.trained.iter().skip(1).any(|&t| t) {
            self.counts.dropped += 1;
            return Ok(());
        }
        if !self.options.pack || self.open.len() + example.tokens.len() > self.window_len {
            self.close();
        }
        for (i, (&id, &trained)) in example.tokens.iter().zip(&example.trained).enumerate() {
            let target = trained && i > 0;
            self.open.push(if target { id } else { id | NOT_A_TARGET });
        }
        Ok(())
    }

    /// Pads the open window, if any, and keeps it.
    fn close(&mut self) {
        if self.open.is_empty() {
            return;
        }
        self.open.resize(self.window_len, self.pad | NOT_A_TARGET);
        self.windows.append(&mut self.open);
    }

    fn finish(mut self) -> (Vec<u32>, PackCounts) {
        self.close();
        (self.windows, self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{default_tokenizer, TokenizerConfig};
    use serde_json::json;

    fn encoder(tokenizer: &Tokenizer, mask: bool) -> ExampleEncoder<'_> {
        ExampleEncoder::new(tokenizer, mask).unwrap()
    }

    /// How many times `id` is trained on in `e`.
    fn trained_count(e: &Example, id: u32) -> usize {
        e.tokens
            .iter()
            .zip(&e.trained)
            .filter(|(&t, &f)| t == id && f)
            .count()
    }

    /// The text of the tokens flagged `trained` (or not).
    fn text_of(t: &Tokenizer, e: &Example, trained: bool) -> String {
        let ids: Vec<u32> = e
            .tokens
            .iter()
            .zip(&e.trained)
            .filter(|(_, &f)| f == trained)
            .map(|(&id, _)| id)
            .collect();
        t.decode(&ids).unwrap()
    }

    /// The default BPE with a `tokenizer_config.json` of `config`.
    fn configured(config: serde_json::Value) -> Tokenizer {
        let Tokenizer::HuggingFace(t) = default_tokenizer().unwrap() else {
            unreachable!("the default tokenizer is a BPE")
        };
        let config = TokenizerConfig::parse(&config.to_string(), "t").unwrap();
        Tokenizer::HuggingFace(t.with_config(config, "t").unwrap())
    }

    fn chatml_tokenizer() -> Tokenizer {
        let template = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content \
            + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}\
            {{ '<|im_start|>assistant\\n' }}{% endif %}";
        configured(json!({"chat_template": template}))
    }

    /// The default BPE has `<s>` but, like GPT-2's tokenizer, no post-processor that puts it
    /// in front: `add_bos_token` in the configuration says otherwise.
    fn with_add_bos(add: bool) -> Tokenizer {
        configured(json!({"add_bos_token": add}))
    }

    #[test]
    fn a_text_is_trained_whole_before_eos_and_after_bos_where_the_tokenizer_adds_it() {
        let plain = default_tokenizer().unwrap();
        assert!(!plain.adds_bos() && !with_add_bos(false).adds_bos());
        let t = with_add_bos(true);
        assert!(t.adds_bos());
        for mask in [false, true] {
            let e = encoder(&t, mask)
                .encode_line(r#"{"text": "It is a truth."}"#)
                .unwrap();
            let mut want = vec![1];
            want.extend(t.encode("It is a truth.").unwrap());
            want.push(2);
            assert_eq!(e.tokens, want);
            // BOS is never a target; with the mask it is not even marked.
            assert!(e.trained[1..].iter().all(|&f| f), "mask {mask}");
            assert_eq!(e.trained[0], !mask);
            let without = encoder(&plain, mask)
                .encode_line(r#"{"text": "It is a truth."}"#)
                .unwrap();
            assert_eq!(without.tokens, want[1..]);
        }
    }

    #[test]
    fn a_masked_prompt_leaves_only_the_completion_and_eos_trained() {
        let t = with_add_bos(true);
        let line = r#"{"prompt": "Who wrote Emma? ", "completion": "Jane Austen."}"#;
        let e = encoder(&t, true).encode_line(line).unwrap();
        // The space before the completion goes with its first word, as GPT-2's BPE splits.
        assert_eq!(text_of(&t, &e, true), " Jane Austen.");
        assert_eq!(e.tokens.last(), Some(&2));
        assert_eq!(e.trained.last(), Some(&true));
        assert_eq!(e.tokens[0], 1);
        assert_eq!(text_of(&t, &e, false), "Who wrote Emma?");
        let unmasked = encoder(&t, false).encode_line(line).unwrap();
        assert_eq!(unmasked.tokens, e.tokens);
        assert!(unmasked.trained.iter().all(|&f| f));
    }

    #[test]
    fn without_a_template_a_conversation_is_role_lines_with_eos_after_each_answer() {
        let t = default_tokenizer().unwrap();
        let line = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell."},
        ]})
        .to_string();
        let e = encoder(&t, true).encode_line(&line).unwrap();
        assert_eq!(text_of(&t, &e, true), " Hello. Farewell.");
        assert_eq!(trained_count(&e, 2), 2);
        let all = t.decode(&e.tokens).unwrap();
        assert_eq!(
            all,
            "system: Be brief.\nuser: Hi\nassistant: Hello.\nuser: Bye\nassistant: Farewell.\n"
        );
    }

    #[test]
    fn a_chat_template_renders_the_conversation_and_masks_all_but_the_answers() {
        let t = chatml_tokenizer();
        let line = json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell."},
        ]})
        .to_string();
        let enc = encoder(&t, true);
        assert!(enc.has_template());
        let e = enc.encode_line(&line).unwrap();
        assert_eq!(
            text_of(&t, &e, true),
            "Hello.<|im_end|>\nFarewell.<|im_end|>\n"
        );
        assert_eq!(
            text_of(&t, &e, false),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\
             <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
        // The template's text is encoded as one text: the same tokens as encoding it whole.
        let whole = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n\
                     <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nFarewell.<|im_end|>\n";
        assert_eq!(e.tokens, t.encode(whole).unwrap());
        // A prompt/completion pair is a user turn and the answer.
        let pair = enc
            .encode_line(r#"{"prompt": "Hi", "completion": "Hello."}"#)
            .unwrap();
        assert_eq!(text_of(&t, &pair, true), "Hello.<|im_end|>\n");
    }

    #[test]
    fn a_template_that_does_not_render_turn_by_turn_is_masked_by_the_answers_text() {
        // Each render starts with the number of messages: no render begins with the last.
        let template = "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}";
        let t = configured(json!({"chat_template": template}));
        let line = r#"{"messages": [{"role": "user", "content": "a "}, {"role": "assistant", "content": "bcd"}]}"#;
        let e = encoder(&t, true).encode_line(line).unwrap();
        assert_eq!(text_of(&t, &e, true), " bcd");
        assert_eq!(text_of(&t, &e, false), "2a");
        let unmasked = encoder(&t, false).encode_line(line).unwrap();
        assert_eq!(t.decode(&unmasked.tokens).unwrap(), "2a bcd");
        // A template that does not render the answer leaves nothing to find.
        let t = configured(json!({"chat_template": "{{ messages | length }}"}));
        let err = encoder(&t, true).encode_line(line).unwrap_err();
        assert!(
            err.contains("the text of messages[1] is not in its rendering"),
            "{err}"
        );
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let t = default_tokenizer().unwrap();
        let enc = encoder(&t, false);
        for (line, want) in [
            ("{", "not JSON"),
            ("[1, 2]", "a row must be a JSON object"),
            (
                "{}",
                "a row needs `text`, `prompt` and `completion`, or `messages`; it has no fields",
            ),
            (r#"{"txt": "a", "id": 3}"#, "it has only `id`, `txt`"),
            (r#"{"text": 5}"#, "`text` must be a string, not 5"),
            (r#"{"prompt": "a"}"#, "`completion` is missing"),
            (r#"{"messages": "hi"}"#, "`messages` must be a list"),
            (r#"{"messages": []}"#, "`messages` is empty"),
            (
                r#"{"messages": [{"role": "user"}]}"#,
                "messages[0] has no string `content`",
            ),
        ] {
            let err = enc.encode_line(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    fn example(n: usize, trained_from: usize) -> Example {
        Example {
            tokens: (10..10 + n as u32).collect(),
            trained: (0..n).map(|i| i >= trained_from).collect(),
        }
    }

    #[test]
    fn examples_are_packed_whole_with_their_first_token_and_the_padding_not_targets() {
        let options = ExampleOptions::default();
        let mut p = Packer::new(8, options, 2);
        p.add(example(3, 1)).unwrap();
        p.add(example(4, 2)).unwrap();
        // Does not fit in the one free slot: a new window.
        p.add(example(5, 0)).unwrap();
        let (windows, counts) = p.finish();
        let f = NOT_A_TARGET;
        assert_eq!(
            windows,
            [
                10 | f,
                11,
                12,
                10 | f,
                11 | f,
                12,
                13,
                2 | f, // two examples, one pad
                10 | f,
                11,
                12,
                13,
                14,
                2 | f,
                2 | f,
                2 | f,
            ]
        );
        assert_eq!(
            (counts.examples, counts.truncated, counts.dropped),
            (3, 0, 0)
        );
        // One example per window without packing.
        let mut p = Packer::new(
            8,
            ExampleOptions {
                pack: false,
                ..options
            },
            0,
        );
        p.add(example(2, 0)).unwrap();
        p.add(example(2, 0)).unwrap();
        assert_eq!(p.finish().0.len(), 16);
    }

    #[test]
    fn a_long_example_is_truncated_or_refused_and_one_with_nothing_to_train_is_dropped() {
        let mut p = Packer::new(4, ExampleOptions::default(), 0);
        p.add(example(6, 0)).unwrap();
        // Only its first token would be trained: nothing to learn.
        p.add(example(3, 3)).unwrap();
        let (windows, counts) = p.finish();
        assert_eq!(windows, [10 | NOT_A_TARGET, 11, 12, 13]);
        assert_eq!(
            (counts.examples, counts.truncated, counts.dropped),
            (2, 1, 1)
        );
        let refuse = ExampleOptions {
            long_examples: LongExamples::Refuse,
            ..ExampleOptions::default()
        };
        let err = Packer::new(4, refuse, 0).add(example(6, 0)).unwrap_err();
        assert!(
            err.contains("6 tokens, longer than a window of 4 (the model's context + 1)"),
            "{err}"
        );
    }

    #[test]
    fn a_folder_gives_training_and_validation_windows_and_errors_name_file_and_line() {
        let t = default_tokenizer().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<String> = (0..40)
            .map(|i| {
                json!({"prompt": format!("Q{i}? "), "completion": format!("A{i}.")}).to_string()
            })
            .collect();
        std::fs::write(dir.path().join(TRAIN_FILE), rows[..30].join("\n")).unwrap();
        assert!(ExampleSet::is_examples(dir.path()));
        let options = ExampleOptions {
            mask_prompt: true,
            ..ExampleOptions::default()
        };
        // Without valid.jsonl the last 5 % of the windows (at least one) validate.
        let alone = ExampleSet::open(dir.path(), &t, 15, options).unwrap();
        assert_eq!(alone.validation_window_count(), 1);
        assert_eq!(alone.examples, 30);
        std::fs::write(
            dir.path().join(VALID_FILE),
            format!("{}\n\n", rows[30..].join("\n")),
        )
        .unwrap();
        let set = ExampleSet::open(dir.path(), &t, 15, options).unwrap();
        assert!(set.validation_window_count() >= 2);
        assert_eq!(set.train_windows(), alone.train_windows() + 1);
        let mut window = vec![0; 16];
        set.copy_train_window(0, &mut window).unwrap();
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        super::super::split_window(&window, &mut inputs, &mut targets);
        let trained: Vec<u32> = targets
            .iter()
            .copied()
            .filter(|&id| id != anetrain_model::IGNORED_TARGET && id != 2)
            .collect();
        let text = t.decode(&trained).unwrap();
        assert!(text.starts_with(" A0. A1."), "{text}");
        assert!(inputs.iter().all(|&id| id < NOT_A_TARGET));
        // A bad row is named by file and line (blank lines count).
        std::fs::write(
            dir.path().join(VALID_FILE),
            format!("{}\n\n{{\"prompt\": 3, \"completion\": \"x\"}}\n", rows[0]),
        )
        .unwrap();
        let err = ExampleSet::open(dir.path(), &t, 15, options)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}:3: `prompt` must be a string, not 3",
                dir.path().join(VALID_FILE).display()
            )
        );
        let refuse = ExampleOptions {
            long_examples: LongExamples::Refuse,
            ..options
        };
        let err = ExampleSet::open(dir.path(), &t, 2, refuse)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}:1: ", dir.path().join(TRAIN_FILE).display())),
            "{err}"
        );
    }

    #[test]
    fn a_chat_prompt_ends_with_the_opening_of_the_assistants_turn() {
        let hi = [json!({"role": "user", "content": "Hi"})];
        let t = chatml_tokenizer();
        let prompt = encoder(&t, false).chat_prompt(&hi).unwrap();
        let want = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(prompt, t.encode(want).unwrap());
        let plain = with_add_bos(true);
        let prompt = encoder(&plain, false).chat_prompt(&hi).unwrap();
        assert_eq!(prompt[0], 1);
        assert_eq!(plain.decode(&prompt).unwrap(), "user: Hi\nassistant: ");
    }

    /// A Qwen3-style template (an empty reasoning block on the last answer only, earlier
    /// answers without theirs) is masked by the answers' text, each with the EOS that closes
    /// it.
    #[test]
    fn answers_are_found_by_their_text_where_turns_do_not_render_one_by_one() {
        let template = "{% for m in messages %}{% if m.role == 'assistant' %}A: \
            {% if loop.last %}<think></think>{% endif %}\
            {{ m.content.split('</think>')[-1].strip() }}{{ eos_token }}\n\
            {% else %}U: {{ m.content }}\n{% endif %}{% endfor %}\
            {% if add_generation_prompt %}A: {% endif %}";
        let t = configured(json!({"chat_template": template, "eos_token": "</s>"}));
        let line = json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>greet</think> Hello."},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell."},
        ]})
        .to_string();
        let e = encoder(&t, true).encode_line(&line).unwrap();
        assert_eq!(text_of(&t, &e, true), " Hello.Farewell.");
        assert_eq!(trained_count(&e, 2), 2, "each answer's EOS is trained");
        assert_eq!(
            t.decode(&e.tokens).unwrap(),
            "U: Hi\nA: Hello.\nU: Bye\nA: <think></think>Farewell.\n"
        );
    }
}

//! What a Hugging Face folder says about its tokenizer beside `tokenizer.json`: the names of
//! its BOS and EOS tokens and its chat template, in `tokenizer_config.json`, or (as transformers
//! 5 saves it) the template in `chat_template.jinja`.
//!
//! The configuration's JSON is kept whole, so that an export writes back every field it had,
//! with the template put inside it.

use super::TokenizerError;
use serde_json::{Map, Value};
use std::path::Path;

/// The file names beside `tokenizer.json`.
pub const CONFIG_FILE: &str = "tokenizer_config.json";
pub const TEMPLATE_FILE: &str = "chat_template.jinja";

/// A parsed `tokenizer_config.json`, with the template of `chat_template.jinja` merged in.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerConfig {
    /// Every field of the file; `chat_template` holds the template wherever it came from.
    fields: Map<String, Value>,
    /// The file's text, while it says everything `fields` does (written back as it was, since
    /// a round trip through f64 would turn a 31-digit `model_max_length` into `1e+30`).
    text: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
    /// Whether encoding puts BOS in front, where the file says.
    pub add_bos_token: Option<bool>,
}

impl TokenizerConfig {
    /// Parses the JSON of a `tokenizer_config.json`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<TokenizerConfig, TokenizerError> {
        let invalid = |message: String| TokenizerError::Invalid {
            file: source.to_string(),
            message,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| invalid(format!("{e}")))?;
        let Value::Object(fields) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        let token = |key: &str| -> Result<Option<String>, TokenizerError> {
            match fields.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                // Older files store an AddedToken: {"content": "<s>", "lstrip": false, ...}.
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(invalid(format!("{key} has no string `content`"))),
                },
                Some(other) => Err(invalid(format!("{key} = {other} is not a token"))),
            }
        };
        let bos_token = token("bos_token")?;
        let eos_token = token("eos_token")?;
        let chat_template = match fields.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // Several named templates: the one named `default`, else the first.
            Some(Value::Array(list)) => {
                let named = |want: Option<&str>| {
                    list.iter().find_map(|t| {
                        let name = t.get("name")?.as_str()?;
                        let template = t.get("template")?.as_str()?;
                        want.is_none_or(|w| w == name).then(|| template.to_string())
                    })
                };
                let chosen = named(Some("default")).or_else(|| named(None));
                Some(chosen.ok_or_else(|| {
                    invalid("chat_template is a list without a {name, template} entry".into())
                })?)
            }
            Some(other) => {
                return Err(invalid(format!(
                    "chat_template must be a string or a list, not {other}"
                )))
            }
        };
        let add_bos_token = fields.get("add_bos_token").and_then(Value::as_bool);
        Ok(TokenizerConfig {
            add_bos_token,
            fields,
            text: Some(text.to_string()),
            bos_token,
            eos_token,
            chat_template,
        })
    }

    /// The configuration in `dir`: its `tokenizer_config.json` and `chat_template.jinja`, if
    /// either is there (None if neither is).
    pub fn read_folder(dir: &Path) -> Result<Option<TokenizerConfig>, TokenizerError> {
        let read = |name: &str| -> Result<Option<String>, TokenizerError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TokenizerError::Read {
                    path: path.display().to_string(),
                    source,
                }),
            }
        };
        let config = read(CONFIG_FILE)?;
        let template = read(TEMPLATE_FILE)?;
        if config.is_none() && template.is_none() {
            return Ok(None);
        }
        let source = dir.join(CONFIG_FILE).display().to_string();
        let mut parsed = TokenizerConfig::parse(config.as_deref().unwrap_or("{}"), &source)?;
        // transformers 5 reads the separate file in preference to the field.
        if let Some(template) = template {
            parsed.set_chat_template(template);
        }
        Ok(Some(parsed))
    }

    /// Whether the file has `key` at all (`null` included).
    pub fn has_field(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }

    fn set_chat_template(&mut self, template: String) {
        self.fields
            .insert("chat_template".into(), Value::String(template.clone()));
        self.chat_template = Some(template);
        self.text = None;
    }

    /// The JSON of the configuration, with its chat template inside: what a checkpoint keeps
    /// and what an export writes as `tokenizer_config.json`.
    pub fn to_json(&self) -> String {
        match &self.text {
            Some(text) => text.clone(),
            None => serde_json::to_string_pretty(&self.fields).expect("a JSON map serialises"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_as_strings_or_as_added_token_objects() {
        let c = TokenizerConfig::parse(
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                "pad_token": null, "model_max_length": 2048}"#,
            "t.json",
        )
        .unwrap();
        assert_eq!(c.bos_token.as_deref(), Some("<s>"));
        assert_eq!(c.eos_token.as_deref(), Some("</s>"));
        assert_eq!(c.chat_template, None);
        let back = TokenizerConfig::parse(&c.to_json(), "back").unwrap();
        assert_eq!(back, c);
        assert_eq!(back.fields["model_max_length"], 2048);
    }

    #[test]
    fn a_list_of_templates_gives_the_default_one() {
        let c = TokenizerConfig::parse(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]}"#,
            "t.json",
        )
        .unwrap();
        assert_eq!(c.chat_template.as_deref(), Some("D"));
        let first = TokenizerConfig::parse(
            r#"{"chat_template": [{"name": "a", "template": "A"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(first.chat_template.as_deref(), Some("A"));
    }

    #[test]
    fn malformed_fields_are_named() {
        for (text, expected) in [
            ("[1]", "not a JSON object"),
            (r#"{"bos_token": 5}"#, "bos_token = 5 is not a token"),
            (
                r#"{"eos_token": {"id": 2}}"#,
                "eos_token has no string `content`",
            ),
            (r#"{"chat_template": 3}"#, "chat_template must be a string"),
            (
                r#"{"chat_template": [{"x": 1}]}"#,
                "without a {name, template}",
            ),
            ("{", "EOF"),
        ] {
            let err = TokenizerConfig::parse(text, "dir/tokenizer_config.json")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("dir/tokenizer_config.json: "), "{err}");
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn a_template_file_overrides_the_field_and_is_kept_in_the_json() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(TokenizerConfig::read_folder(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(TEMPLATE_FILE), "{{ messages }}").unwrap();
        let only_template = TokenizerConfig::read_folder(dir.path()).unwrap().unwrap();
        assert_eq!(
            only_template.chat_template.as_deref(),
            Some("{{ messages }}")
        );
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"chat_template": "old", "eos_token": "<|im_end|>"}"#,
        )
        .unwrap();
        let both = TokenizerConfig::read_folder(dir.path()).unwrap().unwrap();
        assert_eq!(both.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(both.eos_token.as_deref(), Some("<|im_end|>"));
        let back = TokenizerConfig::parse(&both.to_json(), "back").unwrap();
        assert_eq!(back.chat_template.as_deref(), Some("{{ messages }}"));
    }
}

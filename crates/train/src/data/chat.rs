//! Chat templates: the Jinja `chat_template` of a Hugging Face tokenizer, rendered as
//! transformers renders it (`trim_blocks` and `lstrip_blocks` on, `raise_exception`, Python's
//! string methods), to turn a conversation into the text the model was tuned on.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// A template error with its cause, on one line.
fn describe(e: &Error) -> String {
    let mut text = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.to_string(),
    };
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}

impl ChatTemplate {
    /// Compiles `template`; `bos_token` and `eos_token` are the texts the template sees under
    /// those names (empty when the tokenizer has none).
    pub fn new(template: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| describe(&e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, template.to_string())
            .map_err(|e| format!("the chat template does not compile: {}", describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The text of `messages` (JSON objects with at least `role` and `content`), followed by
    /// the opening of an assistant turn when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| format!("the chat template: {}", describe(&e)))?;
        let context = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            // transformers passes `tools=None`: templates test `tools is not none`.
            tools => Value::from(()),
        };
        template
            .render(context)
            .map_err(|e| format!("the chat template failed: {}", describe(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// ChatML with Python string methods, a namespace, `loop.last` and `raise_exception`:
    /// the constructs Qwen's and SmolLM2's templates use.
    const CHATML: &str = "{%- if messages[0].role != 'system' and messages[0].role != 'user' %}\
        {{ raise_exception('the first message must be the system or the user') }}{% endif %}\
        {%- set ns = namespace(turns=0) %}\
        {%- for message in messages %}{% set ns.turns = ns.turns + 1 %}\
        {{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>' + '\\n' }}\
        {%- endfor %}\
        {%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn a_chatml_template_renders_as_transformers_renders_it() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let messages = [
            json!({"role": "user", "content": "  Hi  "}),
            json!({"role": "assistant", "content": "Hello."}),
        ];
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
        );
        assert_eq!(
            t.render(&messages[..1], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn block_tags_take_their_line_with_them() {
        // trim_blocks and lstrip_blocks: a tag alone on its line leaves no blank line.
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if m.role == 'user' %}\nU:{{ m.content }}\n  {% endif %}\n{% endfor %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let out = t
            .render(&[json!({"role": "user", "content": "x"})], false)
            .unwrap();
        assert_eq!(out, "U:x\n");
    }

    #[test]
    fn errors_say_what_failed() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let err = t
            .render(&[json!({"role": "assistant", "content": "x"})], false)
            .unwrap_err();
        assert!(
            err.contains("the chat template failed")
                && err.contains("the first message must be the system or the user"),
            "{err}"
        );
        let err = ChatTemplate::new("{% for %}", "", "").err().unwrap();
        assert!(
            err.starts_with("the chat template does not compile"),
            "{err}"
        );
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn tools_are_none_as_transformers_passes_them() {
        let t = ChatTemplate::new(
            "{% if tools is not none %}TOOLS{% endif %}{{ messages[0].content }}",
            "",
            "",
        )
        .unwrap();
        let out = t
            .render(&[json!({"role": "user", "content": "x"})], false)
            .unwrap();
        assert_eq!(out, "x");
    }
}

//! Text in and out: the Hugging Face tokenizer, the Jinja chat template of `tokenizer_config.json`,
//! and the special ids (eos, mask, end of turn) resolved by token string (SPEC §1, §4).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Ids the decoder needs: eos and mask from the tokenizer (config.json holds none of them), the
/// rest from `config.json` and `generation_config.json` ([`SpecialIds::fit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpecialIds {
    pub eos: u32,
    pub mask: u32,
    /// Ids at or above this are padded embedding rows: never valid output.
    pub valid_vocab: u32,
    /// A second id that ends the answer under LLaDA2.2 (its `generation_config.json` lists
    /// `<|endoftext|>` and `<|role_end|>`).
    pub eos_alt: Option<u32>,
    /// LLaDA2.2's edit tokens (`delete_token_id`, `split_token_id` of `config.json`).
    pub delete: Option<u32>,
    pub split: Option<u32>,
    /// Not an id: LLaDA2.2's routing block (`block_size`), of which a decode block must be a
    /// multiple; `None` without block routing.
    pub routing_block: Option<u32>,
}

impl SpecialIds {
    /// The tokenizer's ids and what `config.json` adds: the valid vocabulary capped by the
    /// embedding table, the edit tokens, the routing block.
    pub fn fit(self, c: &crate::config::Config) -> Self {
        SpecialIds {
            valid_vocab: self.valid_vocab.min(c.vocab_size as u32),
            delete: c.delete_token_id,
            split: c.split_token_id,
            routing_block: c.block_routing().then_some(c.block_size as u32),
            ..self
        }
    }

    /// The edit tokens that are set.
    pub fn edit_ids(&self) -> Vec<u32> {
        self.delete.into_iter().chain(self.split).collect()
    }
}

/// Template instructions one rendering may execute (the LLaDA2 template spends a few dozen per
/// message).
pub const TEMPLATE_FUEL: u64 = 50_000_000;
/// Bytes a rendered prompt may have (about four million tokens of text).
pub const MAX_TEMPLATE_OUTPUT: usize = 16 << 20;
/// Memory one render may map beyond what the process has (Linux: the sandbox's limit).
pub const TEMPLATE_MEMORY: u64 = 1 << 30;
/// Time one render may take (Linux: the sandbox is killed after it; the fuel ends a loop first).
pub const TEMPLATE_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Set from another thread to stop a render ([`ChatTokenizer::render_chat_cancellable`]).
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn set(&self) {
        self.0.store(true, Relaxed);
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Relaxed)
    }
}

/// Collects rendered output, failing once it would pass [`MAX_TEMPLATE_OUTPUT`] or once the
/// render is cancelled.
struct BoundedWriter(Vec<u8>, Arc<AtomicBool>);

impl std::io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.1.load(Relaxed) {
            return Err(std::io::Error::other("render cancelled"));
        }
        if self.0.len() + buf.len() > MAX_TEMPLATE_OUTPUT {
            self.0.resize(MAX_TEMPLATE_OUTPUT, 0);
            return Err(std::io::Error::other("template output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ChatTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: Option<String>,
    bos_token: Option<String>,
    eos_token: String,
    pub ids: SpecialIds,
    /// Tokens that end an assistant turn (`<|role_end|>` where the vocabulary has it, and eos).
    pub end_of_turn: Vec<u32>,
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (optional) from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let bytes = crate::files::read(dir, "tokenizer.json", crate::files::MAX_TEXT_FILE)?;
        let cfg = if crate::files::exists(dir, "tokenizer_config.json") {
            Some(crate::files::read(
                dir,
                "tokenizer_config.json",
                crate::files::MAX_TEXT_FILE,
            )?)
        } else {
            None
        };
        Self::from_bytes(&bytes, cfg.as_deref())
    }

    /// Builds from file contents (the browser passes fetched bytes).
    pub fn from_bytes(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        let cfg: Value = match tokenizer_config {
            Some(b) => serde_json::from_slice(b).map_err(|e| {
                Error::Tokenizer(format!("tokenizer_config.json: not valid JSON: {e}"))
            })?,
            None => Value::Null,
        };
        let token_str = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let eos_token = token_str("eos_token").unwrap_or_else(|| "<|endoftext|>".into());
        let mask_token = token_str("mask_token").unwrap_or_else(|| "<|mask|>".into());
        let id_of = |t: &str, what: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                Error::Tokenizer(format!("the {what} token `{t}` is not in the vocabulary"))
            })
        };
        let eos = id_of(&eos_token, "eos")?;
        let mask = id_of(&mask_token, "mask")?;
        let mut end_of_turn: Vec<u32> = tokenizer.token_to_id("<|role_end|>").into_iter().collect();
        end_of_turn.push(eos);
        let template = match cfg.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // Some models ship a list of named templates: take the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|e| e.get("template")?.as_str().map(str::to_string)),
            Some(other) => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer_config.json: `chat_template` must be a string or a list of named \
                     templates, got {other}"
                )))
            }
        };
        let valid_vocab = tokenizer.get_vocab_size(true) as u32;
        Ok(ChatTokenizer {
            tokenizer,
            template,
            bos_token: token_str("bos_token"),
            eos_token,
            ids: SpecialIds {
                eos,
                mask,
                valid_vocab,
                eos_alt: None,
                delete: None,
                split: None,
                routing_block: None,
            },
            end_of_turn,
        })
    }

    /// Text to ids. Special tokens written in the text are matched as special tokens; nothing
    /// is added around the text (LLaDA2 adds no bos).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids to text, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    /// Ids to text without special tokens but for those in `keep`, written as their token
    /// strings (a tool-using answer keeps its `<tool_call>` markers).
    pub fn decode_keeping(&self, ids: &[u32], keep: &[u32]) -> Result<String> {
        if keep.is_empty() {
            return self.decode(ids);
        }
        let mut out = String::new();
        for run in ids.split_inclusive(|t| keep.contains(t)) {
            let (body, marker) = match run.split_last() {
                Some((last, body)) if keep.contains(last) => (body, Some(*last)),
                _ => (run, None),
            };
            out.push_str(&self.decode(body)?);
            if let Some(m) = marker {
                out.push_str(&self.tokenizer.id_to_token(m).unwrap_or_default());
            }
        }
        Ok(out)
    }

    /// Ids to text, special tokens kept (for traces and debugging).
    pub fn decode_raw(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders `messages` through the model's chat template, within [`TEMPLATE_FUEL`]
    /// instructions and [`MAX_TEMPLATE_OUTPUT`] bytes of output: a template that loops or
    /// blows up is an error, never a hang or an exhausted memory.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_chat_cancellable(messages, add_generation_prompt, &Cancel::default())
    }

    /// [`Self::render_chat`] that stops early once `cancel` is set (a server's client went
    /// away), with [`Error::Cancelled`].
    ///
    /// On Linux the render runs in a child process ([`crate::sandbox`]) limited to
    /// [`TEMPLATE_MEMORY`] bytes and [`TEMPLATE_TIME`]: memory a template builds up in its
    /// variables is bounded there and nowhere else (minijinja has no allocation hook).
    /// Elsewhere (and where no child can be made) it runs here, where every `range` loop ends at
    /// its next turn and every write of output fails once cancelled.
    pub fn render_chat_cancellable(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        cancel: &Cancel,
    ) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| serde_json::json!({ "role": m.role, "content": m.content }))
            .collect();
        self.render_conversation(&messages, None, add_generation_prompt, cancel)
    }

    /// Whether the chat template renders tool definitions (it refers to `tools`): a request
    /// with tools for a template without them is refused rather than silently dropped.
    pub fn template_handles_tools(&self) -> bool {
        self.template
            .as_deref()
            .is_some_and(|t| t.contains("tools"))
    }

    /// The ids of `<tool_call>` and `</tool_call>`, where the vocabulary has them.
    pub fn tool_markers(&self) -> Vec<u32> {
        ["<tool_call>", "</tool_call>"]
            .iter()
            .filter_map(|t| self.tokenizer.token_to_id(t))
            .collect()
    }

    /// A conversation as Hugging Face's `apply_chat_template` gets it: messages as JSON objects
    /// (`role`, `content`, and for tool use `tool_calls`, `tool_call_id`, `name`) and the tool
    /// definitions as `tools` (`none` when `None`, as Hugging Face passes it). Bounded and
    /// cancellable as [`Self::render_chat_cancellable`].
    pub fn render_conversation(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        cancel: &Cancel,
    ) -> Result<String> {
        let template = self.template.as_deref().ok_or_else(|| {
            Error::Template("tokenizer_config.json has no `chat_template`".into())
        })?;
        use crate::sandbox::{isolated, Outcome};
        let render = || {
            self.render_here(
                template,
                messages,
                tools,
                add_generation_prompt,
                &Cancel::default(),
            )
            .map(String::into_bytes)
            .map_err(|e| match e {
                Error::Template(m) => m,
                e => e.to_string(),
            })
        };
        let limit = MAX_TEMPLATE_OUTPUT;
        match isolated(TEMPLATE_MEMORY, TEMPLATE_TIME, limit, cancel, render) {
            Outcome::Done(Ok(bytes)) => String::from_utf8(bytes)
                .map_err(|_| Error::Template("the template rendered invalid UTF-8".into())),
            Outcome::Done(Err(m)) => Err(Error::Template(m)),
            Outcome::OutOfMemory => Err(Error::Template(format!(
                "rendering needed more than {} MiB of memory (or crashed)",
                TEMPLATE_MEMORY >> 20
            ))),
            Outcome::TimedOut => Err(Error::Template(format!(
                "rendering took longer than {} s",
                TEMPLATE_TIME.as_secs()
            ))),
            Outcome::Cancelled => Err(Error::Cancelled),
            Outcome::Unavailable => {
                self.render_here(template, messages, tools, add_generation_prompt, cancel)
            }
        }
    }

    /// The render itself, in this process.
    fn render_here(
        &self,
        template: &str,
        messages: &[Value],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        cancel: &Cancel,
    ) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        // Python string methods (`.strip()`, `.startswith()`) that HF templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        // `range` is where loops get their turns: the built-in one, ending once cancelled.
        let flag = cancel.0.clone();
        env.add_function(
            "range",
            move |lower: isize, upper: Option<isize>, step: Option<isize>| {
                let all = minijinja::functions::range(lower, upper, step)?;
                let flag = flag.clone();
                Ok::<_, minijinja::Error>(minijinja::Value::make_iterable(move || {
                    let flag = flag.clone();
                    all.try_iter()
                        .into_iter()
                        .flatten()
                        .take_while(move |_| !flag.load(Relaxed))
                }))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| Error::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        let mut out = BoundedWriter(Vec::new(), cancel.0.clone());
        tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone().unwrap_or_default(),
                eos_token => self.eos_token.clone(),
            },
            &mut out,
        )
        .map(|_| ())
        .map_err(|e| {
            if cancel.is_set() {
                Error::Cancelled
            } else if e.kind() == minijinja::ErrorKind::OutOfFuel {
                Error::Template(format!(
                    "rendering took more than {TEMPLATE_FUEL} template instructions"
                ))
            } else if out.0.len() >= MAX_TEMPLATE_OUTPUT {
                Error::Template(format!(
                    "the rendered prompt is longer than {MAX_TEMPLATE_OUTPUT} bytes"
                ))
            } else {
                Error::Template(e.to_string())
            }
        })?;
        if cancel.is_set() {
            return Err(Error::Cancelled);
        }
        String::from_utf8(out.0)
            .map_err(|_| Error::Template("the template rendered invalid UTF-8".into()))
    }

    /// Renders and tokenizes a conversation, ready for generation.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.render_chat(messages, true)?)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tokenizer() -> ChatTokenizer {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llada2-add");
        ChatTokenizer::from_dir(&dir).unwrap()
    }

    #[test]
    fn kept_special_tokens_are_written_and_the_others_dropped() {
        let t = fixture_tokenizer();
        let markers = t.tool_markers();
        assert_eq!(markers.len(), 2, "the fixture has both tool-call markers");
        let ids = t
            .encode("12<tool_call>{\"a\": 1}</tool_call>3<|role_end|>")
            .unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "12{\"a\": 1}3");
        assert_eq!(
            t.decode_keeping(&ids, &markers).unwrap(),
            "12<tool_call>{\"a\": 1}</tool_call>3"
        );
        assert_eq!(
            t.decode_keeping(&ids, &[]).unwrap(),
            t.decode(&ids).unwrap()
        );
    }

    #[test]
    fn tools_reach_a_template_that_uses_them_and_only_then() {
        let t = fixture_tokenizer();
        assert!(
            !t.template_handles_tools(),
            "the fixture's template has no tools"
        );
        let mut with = fixture_tokenizer();
        with.template = Some(
            "{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}".into(),
        );
        assert!(with.template_handles_tools());
        let msgs = [serde_json::json!({"role": "user", "content": "hi"})];
        let tools = [serde_json::json!({"type": "function", "function": {"name": "add"}})];
        let out = with
            .render_conversation(&msgs, Some(&tools), false, &Cancel::default())
            .unwrap();
        assert_eq!(out, "[add]user:hi;");
        let out = with
            .render_conversation(&msgs, None, false, &Cancel::default())
            .unwrap();
        assert_eq!(out, "user:hi;");
    }
}

//! From a request body to a generation job: JSON parsing with the failing field named, every
//! parameter range-checked (so the decoder never meets bad input), the prompt rendered and
//! tokenized, and its length checked against the model's context.

use crate::error::ApiError;
use crate::schema::{ChatFields, CompletionFields, Content, Prompt, Sampling, Stop};
use serde::de::DeserializeOwned;
use serde_json::Value;
use unmask_core::chat::Cancel;
use unmask_core::decode::overrides::Mode;
use unmask_core::decode::Decoder;
use unmask_core::{DecodeParams, Model};

/// OpenAI's limit on stop sequences.
const MAX_STOPS: usize = 4;

/// A request, checked and tokenized, ready for the worker.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: DecodeParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub step_events: bool,
    /// The request defined tools: `<tool_call>` spans of the answer become `tool_calls`, their
    /// key/value arguments typed by the tools' schemas.
    pub tools: Option<crate::tools::StringArgs>,
}

/// What checking a request needs from the server.
pub struct Context<'a> {
    pub model: &'a Model,
    pub model_id: &'a str,
    pub defaults: &'a DecodeParams,
    pub per_decoder: &'a [DecodeParams],
    /// Set when the request's client has gone: the chat template stops rendering.
    pub cancel: &'a Cancel,
    /// The server's `--max-tokens`.
    pub max_tokens: Option<usize>,
}

pub fn chat_request(cx: &Context, body: &[u8]) -> Result<GenRequest, ApiError> {
    let v = parse_object(body)?;
    let s: Sampling = fields(&v)?;
    let c: ChatFields = fields(&v)?;
    let tools_ok = cx.model.tokenizer.template_handles_tools();
    let wants_tools = c
        .tools
        .as_ref()
        .is_some_and(|t| t.as_array().is_none_or(|l| !l.is_empty()))
        && c.tool_choice.as_ref().and_then(Value::as_str) != Some("none");
    if wants_tools && !tools_ok {
        return Err(ApiError::param(
            "tools",
            "this model's chat template does not render tools",
        ));
    }
    let tools = crate::tools::check(c.tools.as_ref(), c.tool_choice.as_ref())?;
    if s.logprobs
        .as_ref()
        .is_some_and(|l| l != &Value::Bool(false) && !l.is_null())
    {
        return Err(ApiError::param("logprobs", "logprobs are not supported"));
    }
    let messages = messages(&c, tools_ok)?;
    let text = cx
        .model
        .tokenizer
        .render_conversation(&messages, tools.as_deref(), true, cx.cancel)
        .map_err(|e| match e {
            unmask_core::Error::Cancelled => ApiError::cancelled(),
            e => ApiError::param("messages", format!("chat template: {e}")),
        })?;
    let prompt = cx
        .model
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::param("messages", e.to_string()))?;
    let mut req = finish(cx, s, prompt, "messages")?;
    req.tools = tools.as_deref().map(crate::tools::StringArgs::of);
    Ok(req)
}

pub fn completion_request(cx: &Context, body: &[u8]) -> Result<GenRequest, ApiError> {
    let v = parse_object(body)?;
    let s: Sampling = fields(&v)?;
    let c: CompletionFields = fields(&v)?;
    if c.echo == Some(true) {
        return Err(ApiError::param("echo", "echo is not supported"));
    }
    if c.suffix.is_some() {
        return Err(ApiError::param("suffix", "suffix is not supported"));
    }
    if c.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::param("best_of", "only best_of = 1 is supported"));
    }
    if s.logprobs
        .as_ref()
        .is_some_and(|l| !l.is_null() && l != &Value::from(0))
    {
        return Err(ApiError::param("logprobs", "logprobs are not supported"));
    }
    let vocab = cx.model.special_ids().valid_vocab as i64;
    let ids = |ids: Vec<i64>| -> Result<Vec<u32>, ApiError> {
        match ids.iter().find(|&&t| !(0..vocab).contains(&t)) {
            Some(bad) => Err(ApiError::param(
                "prompt",
                format!("token id {bad} is outside the vocabulary (0..{vocab})"),
            )),
            None => Ok(ids.into_iter().map(|t| t as u32).collect()),
        }
    };
    let one = |n: usize| -> Result<(), ApiError> {
        if n == 1 {
            Ok(())
        } else {
            Err(ApiError::param(
                "prompt",
                format!("exactly one prompt per request is supported, got {n}"),
            ))
        }
    };
    let encode = |t: &str| {
        cx.model
            .tokenizer
            .encode(t)
            .map_err(|e| ApiError::param("prompt", e.to_string()))
    };
    let prompt = match c.prompt {
        Prompt::Text(t) => encode(&t)?,
        Prompt::Texts(mut list) => {
            one(list.len())?;
            encode(&list.remove(0))?
        }
        Prompt::Ids(list) => ids(list)?,
        Prompt::IdLists(mut lists) => {
            one(lists.len())?;
            ids(lists.remove(0))?
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::param(
            "prompt",
            "the prompt is empty (give text or at least one token id)",
        ));
    }
    finish(cx, s, prompt, "prompt")
}

/// The body as a JSON object, or a 400 that says where it broke.
fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(None, format!("the request body is not valid JSON: {e}"))
            .with_code("invalid_json")
    })?;
    if !v.is_object() {
        return Err(
            ApiError::invalid(None, "the request body must be a JSON object")
                .with_code("invalid_json"),
        );
    }
    Ok(v)
}

/// Reads typed fields out of the body; a wrong type or a missing field names the parameter.
fn fields<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(missing) = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let param = if path == "." {
                missing.to_string()
            } else {
                format!("{path}.{missing}")
            };
            return ApiError::param(&param, format!("missing required parameter `{param}`"))
                .with_code("missing_required_parameter");
        }
        ApiError::param(&path, format!("invalid `{path}`: {inner}"))
    })
}

/// The messages as the chat template gets them (JSON objects, as Hugging Face passes them).
/// `tool` messages and assistant `tool_calls` need a template that renders tools (`tools_ok`);
/// a call's `arguments` string is given to the template as the object it encodes.
fn messages(c: &ChatFields, tools_ok: bool) -> Result<Vec<Value>, ApiError> {
    if c.messages.is_empty() {
        return Err(ApiError::param("messages", "messages must not be empty"));
    }
    let no_tools = "this model's chat template does not render tools or tool results";
    let mut out = Vec::with_capacity(c.messages.len());
    for (i, m) in c.messages.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let role = match m.role.as_str() {
            "system" | "developer" if i == 0 => "system",
            "system" | "developer" => {
                return Err(ApiError::param(
                    &at("role"),
                    "only the first message may be a system message (the chat template has no place for others)",
                ))
            }
            "user" => "user",
            "assistant" => "assistant",
            "tool" if tools_ok => "tool",
            "tool" => return Err(ApiError::param(&at("role"), no_tools)),
            other => {
                return Err(ApiError::param(
                    &at("role"),
                    format!("unsupported role `{other}` (use system, user, assistant or tool)"),
                ))
            }
        };
        let calls = match &m.tool_calls {
            None | Some(Value::Null) => None,
            Some(_) if role != "assistant" => {
                return Err(ApiError::param(
                    &at("tool_calls"),
                    "only assistant messages make tool calls",
                ))
            }
            Some(_) if !tools_ok => return Err(ApiError::param(&at("tool_calls"), no_tools)),
            Some(v) => Some(
                tool_calls_for_template(v)
                    .map_err(|why| ApiError::param(&at("tool_calls"), why))?,
            ),
        };
        let content = match &m.content {
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::param(
                                &format!("messages[{i}].content[{j}]"),
                                format!("only text content parts are supported, got `{}`", p.kind),
                            ))
                        }
                    }
                }
                text
            }
            // An assistant message that only calls tools has no content.
            None if calls.is_some() => String::new(),
            None => return Err(ApiError::param(&at("content"), "content is required")),
        };
        let mut msg = serde_json::json!({ "role": role, "content": content });
        if let Some(calls) = calls {
            msg["tool_calls"] = calls;
        }
        if role == "tool" {
            if let Some(id) = &m.tool_call_id {
                msg["tool_call_id"] = Value::String(id.clone());
            }
            if let Some(name) = &m.name {
                msg["name"] = Value::String(name.clone());
            }
        }
        out.push(msg);
    }
    Ok(out)
}

/// An assistant message's OpenAI `tool_calls` as templates read them: `function.arguments` as
/// an object (OpenAI sends a JSON string; templates write `arguments | tojson`).
fn tool_calls_for_template(v: &Value) -> Result<Value, String> {
    let list = v.as_array().ok_or("tool_calls must be an array")?;
    let mut out = Vec::with_capacity(list.len());
    for (k, call) in list.iter().enumerate() {
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .ok_or(format!("tool_calls[{k}].function.name is required"))?;
        let args = match call.pointer("/function/arguments") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|e| format!("tool_calls[{k}].function.arguments is not JSON: {e}"))?,
            Some(a) => a.clone(),
        };
        let mut c = serde_json::json!({
            "type": "function",
            "function": { "name": name, "arguments": args },
        });
        if let Some(id) = call.get("id") {
            c["id"] = id.clone();
        }
        out.push(c);
    }
    Ok(Value::Array(out))
}

/// The shared parameters: ranges, the model's defaults, and the context length.
fn finish(
    cx: &Context,
    s: Sampling,
    prompt: Vec<u32>,
    prompt_param: &str,
) -> Result<GenRequest, ApiError> {
    if let Some(m) = &s.model {
        if m != cx.model_id {
            return Err(ApiError::not_found(format!(
                "the model `{m}` does not exist here; this server serves `{}`",
                cx.model_id
            ))
            .with_code("model_not_found"));
        }
    }
    let mut p = match &s.decoder {
        None => cx.defaults.clone(),
        Some(name) => {
            let d: Decoder = name
                .parse()
                .map_err(|e: unmask_core::Error| ApiError::param("decoder", e.to_string()))?;
            cx.per_decoder
                .iter()
                .find(|p| p.decoder == d)
                .cloned()
                .unwrap_or_else(|| DecodeParams::for_decoder(d))
        }
    };
    if let Some(m) = &s.mode {
        let m: Mode = m
            .parse()
            .map_err(|e: unmask_core::Error| ApiError::param("mode", e.to_string()))?;
        (p.threshold, p.editing_threshold) = m.values();
    }
    let at_least_one = |name: &str, v: i64| -> Result<usize, ApiError> {
        if v < 1 {
            Err(ApiError::param(
                name,
                format!("{name} must be at least 1, got {v}"),
            ))
        } else {
            Ok(usize::try_from(v).unwrap_or(usize::MAX))
        }
    };
    if let Some(n) = s.n {
        if n != 1 {
            return Err(ApiError::param("n", "only n = 1 is supported"));
        }
    }
    for (name, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::param(
                name,
                format!("{name} is not supported by block-diffusion decoding (only 0)"),
            ));
        }
    }
    if let Some(v) = s.max_completion_tokens.or(s.max_tokens) {
        let name = if s.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        p.gen_length = at_least_one(name, v)?;
        if let Some(cap) = cx.max_tokens.filter(|&c| p.gen_length > c) {
            return Err(ApiError::param(
                name,
                format!(
                    "{name} is {}, above this server's limit of {cap} (--max-tokens)",
                    p.gen_length
                ),
            ));
        }
    } else if let Some(cap) = cx.max_tokens {
        p.gen_length = p.gen_length.min(cap);
    }
    if let Some(v) = s.block_length {
        p.block_length = at_least_one("block_length", v)?;
    }
    if let Some(v) = s.steps {
        p.steps = at_least_one("steps", v)?;
    }
    for (name, v, field) in [
        ("max_post_steps", s.max_post_steps, &mut p.max_post_steps),
        (
            "max_steps_per_block",
            s.max_steps_per_block,
            &mut p.max_steps_per_block,
        ),
    ] {
        if let Some(v) = v {
            if !(0..=unmask_core::decode::MAX_STEPS as i64).contains(&v) {
                return Err(ApiError::param(
                    name,
                    format!(
                        "{name} must be in 0..={}, got {v}",
                        unmask_core::decode::MAX_STEPS
                    ),
                ));
            }
            *field = v as usize;
        }
    }
    if let Some(v) = s.num_to_transfer {
        p.num_to_transfer = at_least_one("num_to_transfer", v)?;
    }
    if let Some(v) = s.minimal_topk {
        p.minimal_topk = at_least_one("minimal_topk", v)?;
    }
    if let Some(t) = s.editing_threshold {
        if !(t.is_finite() && t >= 0.0) {
            return Err(ApiError::param(
                "editing_threshold",
                format!("editing_threshold must be a number >= 0, got {t}"),
            ));
        }
        p.editing_threshold = t as f32;
    }
    if let Some(t) = s.threshold {
        if !(t > 0.0 && t <= 1.0) {
            return Err(ApiError::param(
                "threshold",
                format!("threshold must be in (0, 1], got {t}"),
            ));
        }
        p.threshold = t as f32;
    }
    if let Some(t) = s.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::param(
                "temperature",
                format!("temperature must be in [0, 2], got {t}"),
            ));
        }
        p.temperature = t as f32;
    }
    if let Some(t) = s.top_p {
        if !(t > 0.0 && t <= 1.0) {
            return Err(ApiError::param(
                "top_p",
                format!("top_p must be in (0, 1], got {t}"),
            ));
        }
        p.top_p = t as f32;
    }
    if let Some(k) = s.top_k {
        if k < 0 {
            return Err(ApiError::param(
                "top_k",
                format!("top_k must be >= 0, got {k}"),
            ));
        }
        p.top_k = usize::try_from(k).unwrap_or(usize::MAX);
    }
    if let Some(seed) = s.seed {
        // Any 64-bit integer, signed or not: a negative seed keeps its bit pattern.
        p.seed = if let Ok(u) = u64::try_from(seed) {
            u
        } else if let Ok(i) = i64::try_from(seed) {
            i as u64
        } else {
            return Err(ApiError::param("seed", "seed must fit in 64 bits"));
        };
    }
    if let Some(e) = s.eos_early_stop {
        p.eos_early_stop = Some(e);
    }
    let max = cx.model.context_limit();
    if p.block_length > max {
        return Err(ApiError::param(
            "block_length",
            format!("block_length must be at most the context length ({max})"),
        ));
    }
    // Steps past the block length commit nothing under llada2.0 (the schedule gives them 0
    // tokens and the block is full by then): the same output with a bounded schedule. (2.2's
    // schedule past its masks still fills every mask, so its steps are left as given.)
    if p.decoder == Decoder::Llada20 {
        p.steps = p.steps.min(p.block_length);
    }
    let (plen, g, b) = (prompt.len(), p.gen_length, p.block_length);
    let total = plen
        .checked_add(g)
        .and_then(|n| n.checked_next_multiple_of(b))
        .filter(|&t| t <= max);
    if total.is_none() {
        let name = if s.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else if s.max_tokens.is_some() {
            "max_tokens"
        } else {
            prompt_param
        };
        return Err(ApiError::param(
            name,
            format!(
                "this model's maximum context length is {max} positions; the prompt has {plen} \
                 tokens and max_tokens is {g}, padded to whole blocks of {b}: reduce the prompt \
                 or max_tokens"
            ),
        )
        .with_code("context_length_exceeded"));
    }

    // After the context check, which names the parameter (max_tokens) and its code.
    p.validate()
        .map_err(|e| ApiError::invalid(None, e.to_string()))?;

    let stop = match s.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::param(
            "stop",
            format!("at most {MAX_STOPS} stop sequences, got {}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::param("stop", "stop sequences must not be empty"));
    }
    Ok(GenRequest {
        prompt,
        params: p,
        stop,
        stream: s.stream.unwrap_or(false),
        include_usage: s
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        step_events: s.unmask_events.unwrap_or(false),
        tools: None,
    })
}

//! Tool calls: the request's `tools` and `tool_choice` checked, and the model's
//! `<tool_call>...</tool_call>` spans turned into OpenAI `tool_calls`, for a whole answer and
//! for a stream (where text is held back from an opening marker until its closing one).
//!
//! A span holds either JSON, `{"name": ..., "arguments": {...}}` (the Hermes/Qwen form; LLaDA2's
//! Ling template), or the Ling 3 form `name` followed by `<arg_key>k</arg_key><arg_value>v
//! </arg_value>` pairs. A span that is neither, or that never closes, stays in the text as the
//! model wrote it: a client sees what came out rather than losing it.

use crate::error::ApiError;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";
/// Most tools one request may define, and bytes of their JSON.
pub const MAX_TOOLS: usize = 128;
pub const MAX_TOOLS_BYTES: usize = 256 << 10;

/// One call, as OpenAI returns it (`arguments` is a JSON string).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// The request's `tools`, checked: a list of `{"type": "function", "function": {"name": ...}}`.
/// `tool_choice` `none` drops them (the template renders none, nothing is parsed); `auto` (the
/// default) keeps them. `required` and a named function would need the decoder to force a call,
/// which it cannot: they are refused rather than ignored.
pub fn check(
    tools: Option<&Value>,
    choice: Option<&Value>,
) -> Result<Option<Vec<Value>>, ApiError> {
    // tool_choice first: `required` or a named function is refused with or without tools.
    let keep = match choice {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) if s == "auto" => true,
        Some(Value::String(s)) if s == "none" => false,
        Some(other) => {
            return Err(ApiError::param(
                "tool_choice",
                format!(
                    "tool_choice {other} is not supported: the diffusion decoder cannot force a \
                     call; use `auto` or `none`"
                ),
            ))
        }
    };
    let list = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ApiError::param("tools", "tools must be an array")),
    };
    if list.len() > MAX_TOOLS {
        return Err(ApiError::param(
            "tools",
            format!("at most {MAX_TOOLS} tools, got {}", list.len()),
        ));
    }
    if serde_json::to_string(list).map_or(0, |s| s.len()) > MAX_TOOLS_BYTES {
        return Err(ApiError::param(
            "tools",
            format!("the tools' JSON is longer than {MAX_TOOLS_BYTES} bytes"),
        ));
    }
    for (i, t) in list.iter().enumerate() {
        let at = |f: &str| format!("tools[{i}]{f}");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::param(
                &at(".type"),
                "only `function` tools are supported",
            ));
        }
        let name = t.pointer("/function/name").and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            return Err(ApiError::param(
                &at(".function.name"),
                "a tool needs a name",
            ));
        }
    }
    Ok((keep && !list.is_empty()).then(|| list.clone()))
}

/// Per tool, the parameters its JSON schema declares as strings. A Ling 3 `<arg_value>` of
/// one of them stays the text it is (`123` stays `"123"`); any other value is read as JSON
/// where it is JSON, else kept as text (what vLLM's GLM/Ling parser does).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StringArgs(HashMap<String, HashSet<String>>);

impl StringArgs {
    /// From checked `tools` (see [`check`]).
    pub fn of(tools: &[Value]) -> StringArgs {
        let mut map = HashMap::new();
        for t in tools {
            let Some(name) = t.pointer("/function/name").and_then(Value::as_str) else {
                continue;
            };
            let props = t.pointer("/function/parameters/properties");
            let strings = props
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter(|(_, schema)| schema.get("type").and_then(Value::as_str) == Some("string"))
                .map(|(k, _)| k.clone())
                .collect();
            map.insert(name.to_string(), strings);
        }
        StringArgs(map)
    }

    fn is_string(&self, tool: &str, arg: &str) -> bool {
        self.0.get(tool).is_some_and(|args| args.contains(arg))
    }
}

/// An id no other call of this process shares.
fn next_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("call_{:016x}{:08x}", t ^ n.rotate_left(40), n as u32)
}

/// The call inside one span (the text between the markers), if it is a well-formed one.
pub fn parse_call(inner: &str, strings: &StringArgs) -> Option<ToolCall> {
    let inner = inner.trim();
    let (name, arguments) = if inner.starts_with('{') {
        let v: Value = serde_json::from_str(inner).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        let args = match v.get("arguments").or_else(|| v.get("parameters")) {
            None | Some(Value::Null) => Value::Object(Map::new()),
            // Some models write the arguments as a JSON string already.
            Some(Value::String(s)) => serde_json::from_str(s).ok()?,
            Some(a) => a.clone(),
        };
        if !args.is_object() {
            return None;
        }
        (name, args)
    } else {
        key_value_call(inner, strings)?
    };
    if name.is_empty() {
        return None;
    }
    Some(ToolCall {
        id: next_id(),
        kind: "function",
        function: FunctionCall {
            name,
            arguments: arguments.to_string(),
        },
    })
}

/// `name` then `<arg_key>k</arg_key><arg_value>v</arg_value>` pairs (whitespace between them
/// ignored); a value is typed as [`StringArgs`] says.
fn key_value_call(inner: &str, strings: &StringArgs) -> Option<(String, Value)> {
    let (name, mut rest) = match inner.find("<arg_key>") {
        Some(i) => (inner[..i].trim(), &inner[i..]),
        None => (inner, ""),
    };
    if name.is_empty() || name.contains(char::is_whitespace) || name.contains('<') {
        return None;
    }
    let mut args = Map::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let r = rest.strip_prefix("<arg_key>")?;
        let (key, r) = r.split_once("</arg_key>")?;
        let r = r.trim_start().strip_prefix("<arg_value>")?;
        let (value, r) = r.split_once("</arg_value>")?;
        let key = key.trim();
        let text = || Value::String(value.to_string());
        let v = if strings.is_string(name, key) {
            text()
        } else {
            serde_json::from_str(value).unwrap_or_else(|_| text())
        };
        args.insert(key.to_string(), v);
        rest = r;
    }
    Some((name.to_string(), Value::Object(args)))
}

/// What a stream shows: text, or a finished call.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
}

/// Splits streamed text into pieces as it arrives. Text outside spans passes through at once
/// (but for a tail that may be the start of a marker); a span is held until it closes.
#[derive(Debug, Default)]
pub struct ToolStream {
    strings: StringArgs,
    pending: String,
    /// Inside a span: `pending` holds its text after the opening marker.
    inside: bool,
    calls: usize,
}

impl ToolStream {
    pub fn new(strings: StringArgs) -> ToolStream {
        ToolStream {
            strings,
            ..ToolStream::default()
        }
    }

    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.pending.push_str(delta);
        let mut out = Vec::new();
        loop {
            if self.inside {
                let Some(end) = self.pending.find(CLOSE) else {
                    break;
                };
                let mut inner = self.pending[..end].to_string();
                self.pending.drain(..end + CLOSE.len());
                self.inside = false;
                // A span opened again before it closed: what came before the last opening
                // marker is text (an unclosed span), the call is what follows it.
                if let Some(again) = inner.rfind(OPEN) {
                    out.push(Piece::Text(format!("{OPEN}{}", &inner[..again])));
                    inner.drain(..again + OPEN.len());
                }
                match parse_call(&inner, &self.strings) {
                    Some(c) => {
                        self.calls += 1;
                        out.push(Piece::Call(c));
                    }
                    None => out.push(Piece::Text(format!("{OPEN}{inner}{CLOSE}"))),
                }
            } else if let Some(start) = self.pending.find(OPEN) {
                if start > 0 {
                    out.push(Piece::Text(self.pending[..start].to_string()));
                }
                self.pending.drain(..start + OPEN.len());
                self.inside = true;
            } else {
                // Keep back a tail that could still become `<tool_call>`.
                let keep = (1..OPEN.len())
                    .rev()
                    .find(|&k| self.pending.ends_with(&OPEN[..k]))
                    .unwrap_or(0);
                let cut = self.pending.len() - keep;
                if cut > 0 {
                    out.push(Piece::Text(self.pending[..cut].to_string()));
                    self.pending.drain(..cut);
                }
                break;
            }
        }
        out
    }

    /// The rest at the end of the answer: an unclosed span is text.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        let text = if self.inside {
            format!("{OPEN}{rest}")
        } else {
            rest
        };
        self.inside = false;
        if text.is_empty() {
            Vec::new()
        } else {
            vec![Piece::Text(text)]
        }
    }

    /// Calls found so far.
    pub fn calls(&self) -> usize {
        self.calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A whole answer's text and calls, as the worker's stream gives them.
    fn split(text: &str, strings: &StringArgs) -> (String, Vec<ToolCall>) {
        let mut s = ToolStream::new(strings.clone());
        let mut pieces = s.push(text);
        pieces.extend(s.finish());
        let mut content = String::new();
        let mut calls = Vec::new();
        for p in pieces {
            match p {
                Piece::Text(t) => content.push_str(&t),
                Piece::Call(c) => calls.push(c),
            }
        }
        (content, calls)
    }

    fn split_plain(text: &str) -> (String, Vec<ToolCall>) {
        split(text, &StringArgs::default())
    }

    fn args(c: &ToolCall) -> Value {
        serde_json::from_str(&c.function.arguments).unwrap()
    }

    #[test]
    fn one_call_and_the_text_around_it() {
        let (text, calls) =
            split_plain("Let me add.<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 23, \"b\": 45}}</tool_call>");
        assert_eq!(text, "Let me add.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "add");
        assert_eq!(args(&calls[0]), json!({"a": 23, "b": 45}));
        assert_eq!(calls[0].kind, "function");
        assert!(calls[0].id.starts_with("call_"));
    }

    #[test]
    fn two_calls_get_two_ids_and_keep_their_order() {
        let (text, calls) = split_plain(
            "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": [1]}\"}</tool_call>",
        );
        assert_eq!(text, "\n");
        let names: Vec<&str> = calls.iter().map(|c| c.function.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_ne!(calls[0].id, calls[1].id);
        assert_eq!(
            args(&calls[1]),
            json!({"x": [1]}),
            "string arguments are parsed"
        );
    }

    #[test]
    fn the_key_value_form_is_read() {
        let (_, calls) = split_plain(
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
        );
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(args(&calls[0]), json!({"city": "Paris", "days": 3}));
    }

    #[test]
    fn key_value_arguments_the_schema_calls_strings_stay_strings() {
        let tools = [
            json!({"type": "function", "function": {"name": "lookup", "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "n": {"type": "integer"}}
            }}}),
        ];
        let text = "<tool_call>lookup<arg_key>code</arg_key><arg_value>123</arg_value>\
                    <arg_key>n</arg_key><arg_value>7</arg_value>\
                    <arg_key>other</arg_key><arg_value>true</arg_value></tool_call>";
        let (_, calls) = split(text, &StringArgs::of(&tools));
        assert_eq!(
            args(&calls[0]),
            json!({"code": "123", "n": 7, "other": true})
        );
        // Without the schema every JSON-looking value is JSON.
        let (_, calls) = split_plain(text);
        assert_eq!(args(&calls[0]), json!({"code": 123, "n": 7, "other": true}));
    }

    #[test]
    fn a_span_that_never_closes_does_not_swallow_the_next_call() {
        let text = "<tool_call>bad start <tool_call>{\"name\": \"ok\"}</tool_call> end";
        let (content, calls) = split_plain(text);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "ok");
        assert_eq!(content, "<tool_call>bad start  end");
    }

    #[test]
    fn malformed_spans_stay_text() {
        for bad in [
            "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": </tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1, 2]}</tool_call>",
            "<tool_call>two words</tool_call>",
            "<tool_call></tool_call>",
            "<tool_call>{\"name\": \"never_closed\"}",
        ] {
            let (text, calls) = split_plain(bad);
            assert!(calls.is_empty(), "{bad}");
            assert_eq!(text, bad, "the model's text is kept as written");
        }
        // A good call next to a bad one: the good one is a call.
        let (text, calls) =
            split_plain("<tool_call>oops x</tool_call><tool_call>{\"name\": \"ok\"}</tool_call>");
        assert_eq!(text, "<tool_call>oops x</tool_call>");
        assert_eq!(calls.len(), 1);
        assert_eq!(args(&calls[0]), json!({}));
    }

    #[test]
    fn a_stream_holds_spans_and_partial_markers_back() {
        let whole =
            "Sure. <tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}</tool_call> done";
        // Every split point: the pieces concatenate to the whole answer's.
        for cut in 0..=whole.len() {
            if !whole.is_char_boundary(cut) {
                continue;
            }
            let mut s = ToolStream::default();
            let mut pieces = s.push(&whole[..cut]);
            // Nothing of a span is shown before it closes.
            for p in &pieces {
                if let Piece::Text(t) = p {
                    assert!(!t.contains('{') && !t.contains("<tool"), "cut {cut}: {t:?}");
                }
            }
            pieces.extend(s.push(&whole[cut..]));
            pieces.extend(s.finish());
            let text: String = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(text, "Sure.  done", "cut {cut}");
            assert_eq!(s.calls(), 1);
        }
    }

    #[test]
    fn requests_are_checked() {
        let tool = json!({"type": "function", "function": {"name": "add", "parameters": {}}});
        assert_eq!(check(None, None).unwrap(), None);
        assert_eq!(check(Some(&json!([tool])), None).unwrap().unwrap().len(), 1);
        assert_eq!(
            check(Some(&json!([tool])), Some(&json!("auto")))
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            check(Some(&json!([tool])), Some(&json!("none"))).unwrap(),
            None
        );
        assert_eq!(check(Some(&json!([])), None).unwrap(), None);
        for (tools, choice, param) in [
            (json!({"a": 1}), json!(null), "tools"),
            (json!([{"type": "code"}]), json!(null), "tools[0].type"),
            (
                json!([{"type": "function", "function": {}}]),
                json!(null),
                "tools[0].function.name",
            ),
            (json!([tool]), json!("required"), "tool_choice"),
            (
                json!([tool]),
                json!({"type": "function", "function": {"name": "add"}}),
                "tool_choice",
            ),
        ] {
            let e = check(Some(&tools), Some(&choice)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{tools} {choice}");
        }
        // A choice that would force a call is refused without tools too.
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "f"}}),
        ] {
            let e = check(None, Some(&choice)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("tool_choice"));
        }
        assert_eq!(check(None, Some(&json!("none"))).unwrap(), None);
        let many: Vec<Value> = (0..=MAX_TOOLS).map(|_| tool.clone()).collect();
        assert!(check(Some(&Value::Array(many)), None).is_err());
    }
}

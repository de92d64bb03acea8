//! Tool calls over real HTTP: `tools` rendered through a chat template that handles them, the
//! model's `<tool_call>` spans returned as OpenAI `tool_calls` (whole and streamed), `tool`
//! messages and assistant calls in the history, malformed spans kept as text, and a clear 400
//! where the template has no tools. The model's output is scripted (a backend that writes
//! given tokens) so that one, two and malformed calls are certain; everything else (template,
//! tokenizer, decoder, server) is the real path.

mod server_support;

use serde_json::{json, Value};
use server_support::*;
use std::sync::Arc;
use unmask_core::backend::{Sampled, StepStats};
use unmask_core::{Backend, Model, Result, Step, StepOutput};

/// A Ling-style template with tools: the tool list in a system turn, assistant calls written
/// back as `<tool_call>` JSON, tool results as observations.
const TOOL_TEMPLATE: &str = concat!(
    "{%- if tools %}<role>SYSTEM</role># Tools\n<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>",
    "\nCall a function with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|role_end|>{%- endif %}",
    "{%- for m in messages %}",
    "{%- if m.role == 'user' %}<role>HUMAN</role>{{ m.content }}<|role_end|>",
    "{%- elif m.role == 'assistant' %}<role>ASSISTANT</role>{{ m.content }}",
    "{%- for c in m.tool_calls or [] %}<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{%- endfor %}<|role_end|>",
    "{%- elif m.role == 'tool' %}<role>OBSERVATION</role><tool_response>{{ m.content }}</tool_response><|role_end|>",
    "{%- endif %}{%- endfor %}",
    "{%- if add_generation_prompt %}<role>ASSISTANT</role>{%- endif %}"
);

/// The addition model with `TOOL_TEMPLATE` as its chat template.
fn tool_model(dir: &std::path::Path) -> Arc<Model> {
    let d = unmask_tests::copy_fixture(ADD_MODEL, dir);
    let path = d.join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["chat_template"] = Value::String(TOOL_TEMPLATE.into());
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    Arc::new(Model::open(&d).unwrap())
}

/// Writes `script` as the answer: every masked row gets the script's token for its place in
/// the answer (end of turn past it), with full confidence, so the decoder commits it at once.
struct Scripted {
    script: Vec<u32>,
    mask: u32,
    end: u32,
    first_answer_position: Option<usize>,
    cached: usize,
}

impl Backend for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }
    fn step(&mut self, s: &Step) -> Result<StepOutput> {
        let n = s.tokens.len();
        let first_row = n - s.out_rows;
        if self.first_answer_position.is_none() {
            let masked = s.tokens.iter().position(|&t| t == self.mask);
            self.first_answer_position = masked.map(|i| s.start + i);
        }
        let samples = (first_row..n)
            .map(|i| {
                let pos = s.start + i;
                let token = match self.first_answer_position {
                    Some(f) if pos >= f => *self.script.get(pos - f).unwrap_or(&self.end),
                    _ => s.tokens[i],
                };
                Sampled {
                    token,
                    confidence: 1.0,
                    ranked: [token; 3],
                }
            })
            .collect();
        self.cached = s.start + s.keep;
        Ok(StepOutput {
            samples,
            ..Default::default()
        })
    }
    fn cached(&self) -> usize {
        self.cached
    }
    fn reset(&mut self) {
        self.cached = 0;
        self.first_answer_position = None;
    }
    fn last_stats(&self) -> StepStats {
        StepStats::default()
    }
}

fn scripted(answer: &'static str) -> unmask_server::BackendFactory {
    Box::new(move |m: &Model| {
        let mut script = m.tokenizer.encode(answer)?;
        let end = m.tokenizer.end_of_turn[0];
        script.push(end);
        Ok(Box::new(Scripted {
            script,
            mask: m.special_ids().mask,
            end,
            first_answer_position: None,
            cached: 0,
        }) as Box<dyn Backend>)
    })
}

fn add_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds two integers",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        }
    })
}

fn body(extra: Value) -> Value {
    let mut b = json!({
        "messages": [{"role": "user", "content": "What is 23+45?"}],
        "tools": [add_tool()],
        "max_tokens": 64,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn arguments(call: &Value) -> Value {
    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap()
}

const ONE_CALL: &str =
    "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 23, \"b\": 45}}</tool_call>";
const TWO_CALLS: &str = "I will add.<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call><tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 3, \"b\": 4}}</tool_call>";
const MALFORMED: &str = "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 2</tool_call>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_comes_back_as_tool_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tool_model(tmp.path()), 4, scripted(ONE_CALL)).await;
    let (st, v) = s.post("/v1/chat/completions", &body(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], Value::Null, "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["function"]["name"], "add");
    assert_eq!(arguments(&calls[0]), json!({"a": 23, "b": 45}));
    // The tools reached the prompt through the template.
    let rendered = s
        .model
        .tokenizer
        .render_conversation(
            &[json!({"role": "user", "content": "What is 23+45?"})],
            Some(&[add_tool()]),
            true,
            &Default::default(),
        )
        .unwrap();
    assert!(rendered.contains("Adds two integers"), "{rendered}");
    let prompt = s.model.tokenizer.encode(&rendered).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_and_text_streamed_and_not() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tool_model(tmp.path()), 4, scripted(TWO_CALLS)).await;
    let (st, v) = s.post("/v1/chat/completions", &body(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], "I will add.");
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(arguments(&calls[0]), json!({"a": 1, "b": 2}));
    assert_eq!(arguments(&calls[1]), json!({"a": 3, "b": 4}));
    assert_ne!(calls[0]["id"], calls[1]["id"]);

    let data = s
        .stream("/v1/chat/completions", &body(json!({"stream": true})))
        .await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks = chunks(&data);
    assert_eq!(streamed_text(&chunks), "I will add.");
    let streamed: Vec<&Value> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .collect();
    assert_eq!(streamed.len(), 2, "{chunks:?}");
    for (i, c) in streamed.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["type"], "function");
        assert_eq!(c["function"]["name"], "add");
        assert_eq!(arguments(c), arguments(&calls[i]));
    }
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_call_stays_text() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tool_model(tmp.path()), 4, scripted(MALFORMED)).await;
    let (st, v) = s.post("/v1/chat/completions", &body(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["content"], MALFORMED);
    assert!(choice["message"].get("tool_calls").is_none(), "{v}");
    let data = s
        .stream("/v1/chat/completions", &body(json!({"stream": true})))
        .await;
    assert_eq!(streamed_text(&chunks(&data)), MALFORMED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_with_calls_and_results_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tool_model(tmp.path()), 4, scripted("68")).await;
    let history = json!([
        {"role": "user", "content": "What is 23+45?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 23, \"b\": 45}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "name": "add", "content": "68"},
    ]);
    let (st, v) = s
        .post("/v1/chat/completions", &body(json!({"messages": history})))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "68");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let rendered = s
        .model
        .tokenizer
        .render_conversation(
            &[
                json!({"role": "user", "content": "What is 23+45?"}),
                json!({"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 23, "b": 45}}}
                ]}),
                json!({"role": "tool", "content": "68", "tool_call_id": "call_1", "name": "add"}),
            ],
            Some(&[add_tool()]),
            true,
            &Default::default(),
        )
        .unwrap();
    // The call's arguments string reached the template as an object.
    assert!(
        rendered.contains(
            "<role>ASSISTANT</role><tool_call>{\"name\": \"add\", \"arguments\": {\"a\":23,\"b\":45}}</tool_call><|role_end|>"
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains("<tool_response>68</tool_response>"),
        "{rendered}"
    );
    assert_eq!(
        v["usage"]["prompt_tokens"],
        s.model.tokenizer.encode(&rendered).unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_honoured_is_a_400() {
    // The fixture's own template has no tools.
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let (st, v) = s.post("/v1/chat/completions", &body(json!({}))).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["param"], "tools");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not render tools"));
    let tool_msg = json!([{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}]);
    let (st, v) = s
        .post("/v1/chat/completions", &json!({"messages": tool_msg}))
        .await;
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("messages[1].role"))
    );
    // `none` drops the tools: the request runs as a plain chat.
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &body(json!({"tool_choice": "none"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "68");

    let tmp = tempfile::tempdir().unwrap();
    let s = start(tool_model(tmp.path()), 4, scripted(ONE_CALL)).await;
    for (extra, param) in [
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": [{"type": "function", "function": {}}]}),
            "tools[0].function.name",
        ),
        (json!({"tools": "add"}), "tools"),
        (
            json!({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}),
            "messages[0].tool_calls",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": "{bad"}}]}]}),
            "messages[0].tool_calls",
        ),
    ] {
        let (st, v) = s.post("/v1/chat/completions", &body(extra.clone())).await;
        assert_eq!(st, 400, "{extra}: {v}");
        assert_eq!(v["error"]["param"], param, "{extra}: {v}");
    }
}

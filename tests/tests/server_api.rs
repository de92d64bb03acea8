//! The OpenAI-compatible API over real HTTP on 127.0.0.1: models, health, answers equal to the
//! decoder's, streamed text equal to the non-streamed text, usage, stop strings, step events,
//! metrics, and a 4xx with an OpenAI error body for every kind of bad request.

mod server_support;

use serde_json::{json, Value};
use server_support::*;
use unmask_core::{Message, Model};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_health() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let (st, v) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["id"], s.model_id.as_str());
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(
        v["data"][0]["max_context"],
        s.model.config.max_position_embeddings
    );
    let (st, v) = s.get(&format!("/v1/models/{}", s.model_id)).await;
    assert_eq!((st, v["id"].as_str()), (200, Some(s.model_id.as_str())));
    let (st, v) = s.get("/v1/models/other").await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    let (st, v) = s.get("/health").await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answer_and_usage_match_the_decoder() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let m = s.model.clone();
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &chat_body("What is 23+45?", json!({})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], s.model_id.as_str());
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    // The fixture was trained on additions; the text must also be exactly the decoder's.
    assert_eq!(choice["message"]["content"], "68");
    let prompt = m.tokenizer.encode_chat(&user("What is 23+45?")).unwrap();
    let (text, n, finish) = expected(&m, &prompt, &params_for(&m, &json!({})));
    assert_eq!(choice["message"]["content"], text.as_str());
    assert_eq!(choice["finish_reason"], finish);
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], n);
    assert_eq!(v["usage"]["total_tokens"], prompt.len() + n);
    // End-of-turn tokens never reach the text.
    for &id in &m.tokenizer.end_of_turn {
        let t = m.tokenizer.id_to_token(id).unwrap();
        assert!(!text.contains(&t));
    }
}

/// Every case, streamed and not, against the decoder run directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_equals_non_streamed_text() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let m = s.model.clone();
    let qs = questions(&m.dir, 3);
    let mut cases: Vec<(String, Value)> = Vec::new();
    for q in &qs {
        cases.push((q.clone(), json!({})));
        // One token per step: the prefix grows over many steps, in several deltas.
        cases.push((
            q.clone(),
            json!({ "threshold": 1.0, "block_length": 8, "steps": 8 }),
        ));
        // Sampling with a seed.
        cases.push((q.clone(), json!({ "temperature": 0.8, "seed": 7 })));
        // LLaDA2.1 token editing: tokens change until their block ends, so the stream grows by
        // finished blocks; eager filling with edits, and one mask per step in small blocks.
        cases.push((
            q.clone(),
            json!({ "decoder": "llada2.1", "threshold": 0.5, "editing_threshold": 0.0 }),
        ));
        cases.push((
            q.clone(),
            json!({ "decoder": "llada2.1", "threshold": 1.0, "block_length": 8 }),
        ));
    }
    // Cut by max_tokens: finish_reason "length", and commits past the end never shown.
    cases.push((qs[0].clone(), json!({ "max_tokens": 1 })));
    for (q, extra) in &cases {
        let prompt = m.tokenizer.encode_chat(&user(q)).unwrap();
        let (text, n, finish) = expected(&m, &prompt, &params_for(&m, extra));
        let (st, v) = s
            .post("/v1/chat/completions", &chat_body(q, extra.clone()))
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            text.as_str(),
            "{q} {extra}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], finish, "{q} {extra}");
        assert_eq!(v["usage"]["completion_tokens"], n);

        let mut body = chat_body(q, extra.clone());
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
        let c = chunks(&s.stream("/v1/chat/completions", &body).await);
        assert_eq!(streamed_text(&c), text, "{q} {extra}");
        let id = c[0]["id"].as_str().unwrap();
        for chunk in &c {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], id);
            assert!(chunk.get("unmask").is_none(), "events are opt-in");
        }
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        let fin = &c[c.len() - 2];
        assert_eq!(fin["choices"][0]["finish_reason"], finish);
        let usage = &c[c.len() - 1];
        assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
        // The same counts; the repeated prompt's whole blocks now come from the cache.
        for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(usage["usage"][k], v["usage"][k], "{k}");
        }
        assert!(usage["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

        // The same through /v1/completions with the rendered prompt as token ids.
        let mut body = extra.clone();
        body["prompt"] = json!(prompt);
        let (st, v) = s.post("/v1/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], text.as_str());
        assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
        body["stream"] = json!(true);
        let c = chunks(&s.stream("/v1/completions", &body).await);
        assert_eq!(streamed_text(&c), text);
        assert!(c.iter().all(|c| c["object"] == "text_completion"));
        assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], finish);
    }
    // A text prompt is tokenized as `unmask generate --prompt` does.
    let text_prompt = m.tokenizer.render_chat(&user(&qs[1]), true).unwrap();
    let (st, v) = s
        .post("/v1/completions", &json!({ "prompt": text_prompt }))
        .await;
    assert_eq!(st, 200);
    let ids = m.tokenizer.encode(&text_prompt).unwrap();
    let (text, _, _) = expected(&m, &ids, &params_for(&m, &json!({})));
    assert_eq!(v["choices"][0]["text"], text.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text_streamed_or_not() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let m = s.model.clone();
    // A question whose answer has at least two characters: stop at its last one.
    let q = questions(&m.dir, 20)
        .into_iter()
        .find(|q| {
            let p = m.tokenizer.encode_chat(&user(q)).unwrap();
            expected(&m, &p, &params_for(&m, &json!({})))
                .0
                .chars()
                .count()
                >= 2
        })
        .expect("a multi-character answer");
    let p = m.tokenizer.encode_chat(&user(&q)).unwrap();
    let full = expected(&m, &p, &params_for(&m, &json!({}))).0;
    let last = full.chars().last().unwrap().to_string();
    let want = &full[..full.rfind(&last).unwrap()];
    for extra in [json!({ "stop": last }), json!({ "stop": ["zzz", last] })] {
        let (st, v) = s
            .post("/v1/chat/completions", &chat_body(&q, extra.clone()))
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], want, "{full}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let mut body = chat_body(&q, extra);
        body["stream"] = json!(true);
        let c = chunks(&s.stream("/v1/chat/completions", &body).await);
        assert_eq!(streamed_text(&c), want);
    }
    // A stop string that never occurs changes nothing.
    let (_, v) = s
        .post(
            "/v1/chat/completions",
            &chat_body(&q, json!({ "stop": "never" })),
        )
        .await;
    assert_eq!(v["choices"][0]["message"]["content"], full.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_events_describe_every_forward() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let m = s.model.clone();
    let q = &questions(&m.dir, 1)[0];
    let extra = json!({ "threshold": 1.0, "block_length": 8, "steps": 8 });
    let prompt = m.tokenizer.encode_chat(&user(q)).unwrap();
    let (text, _, _) = expected(&m, &prompt, &params_for(&m, &extra));
    let before = s.metric("unmask_forwards_total").await;
    let mut body = chat_body(q, extra);
    body["stream"] = json!(true);
    body["unmask_events"] = json!(true);
    let c = chunks(&s.stream("/v1/chat/completions", &body).await);
    let forwards = s.metric("unmask_forwards_total").await - before;
    assert_eq!(streamed_text(&c), text, "events leave the text unchanged");
    let steps: Vec<&Value> = c.iter().filter_map(|c| c.get("unmask")).collect();
    assert_eq!(steps.len() as f64, forwards);
    let mut committed = 0;
    for (i, st) in steps.iter().enumerate() {
        assert_eq!(st["forward"], i);
        assert_eq!(st["answer_start"], prompt.len());
        let window = st["window"].as_array().unwrap();
        assert_eq!(window.len(), 8);
        let masked_before = window.iter().filter(|t| t.is_null()).count();
        let props = st["proposals"].as_array().unwrap();
        assert_eq!(props.len(), masked_before);
        for p in props {
            let c = p["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&c));
            assert!(p["text"].is_string());
        }
        // threshold 1 commits exactly one token per step (within the answer).
        let n = st["committed"].as_array().unwrap().len();
        assert!(n <= 1);
        committed += n;
        let masked_after = st["masked_after"].as_array().unwrap().len();
        assert!(masked_after < masked_before || n == 0);
    }
    assert!(committed > 0);
}

/// (endpoint, body, status, param): each must be refused with an OpenAI error body.
fn bad_requests(m: &Model) -> Vec<(&'static str, String, u16, Option<&'static str>)> {
    let max_positions = m.config.max_position_embeddings;
    let chat = "/v1/chat/completions";
    let cmpl = "/v1/completions";
    let c = |extra: Value| chat_body("What is 1+1?", extra).to_string();
    let p = |extra: Value| {
        let mut b = json!({ "prompt": "1+1=" });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    // A prompt longer than the whole context, in tokens.
    let mut long = String::from("12+34=46, ");
    while m.tokenizer.encode(&long).unwrap().len() <= max_positions {
        long = long.repeat(2);
    }
    vec![
        (chat, "{\"messages\": [".into(), 400, None),
        (chat, "not json".into(), 400, None),
        (chat, "[1, 2]".into(), 400, None),
        (chat, "".into(), 400, None),
        (chat, json!({ "model": "test-model" }).to_string(), 400, Some("messages")),
        (cmpl, json!({ "max_tokens": 4 }).to_string(), 400, Some("prompt")),
        (chat, json!({ "messages": [] }).to_string(), 400, Some("messages")),
        (chat, json!({ "messages": "hi" }).to_string(), 400, Some("messages")),
        (chat, json!({ "messages": [{ "content": "hi" }] }).to_string(), 400, Some("messages[0].role")),
        (chat, json!({ "messages": [{ "role": "tool", "content": "x" }] }).to_string(), 400, Some("messages[0].role")),
        (chat, json!({ "messages": [{ "role": "user" }] }).to_string(), 400, Some("messages[0].content")),
        (chat, json!({ "messages": [{ "role": "user", "content": "a" }, { "role": "system", "content": "b" }] }).to_string(), 400, Some("messages[1].role")),
        (chat, c(json!({ "threshold": 0 })), 400, Some("threshold")),
        (chat, c(json!({ "threshold": 1.5 })), 400, Some("threshold")),
        (chat, c(json!({ "threshold": -0.1 })), 400, Some("threshold")),
        (chat, c(json!({ "threshold": "high" })), 400, Some("threshold")),
        (chat, c(json!({ "block_length": 0 })), 400, Some("block_length")),
        (chat, c(json!({ "block_length": -3 })), 400, Some("block_length")),
        (chat, c(json!({ "steps": 0 })), 400, Some("steps")),
        (chat, c(json!({ "max_tokens": -1 })), 400, Some("max_tokens")),
        (chat, c(json!({ "max_tokens": 0 })), 400, Some("max_tokens")),
        (chat, c(json!({ "max_tokens": 2.5 })), 400, Some("max_tokens")),
        (chat, c(json!({ "max_completion_tokens": -5 })), 400, Some("max_completion_tokens")),
        (chat, c(json!({ "max_tokens": max_positions + 1 })), 400, Some("max_tokens")),
        (chat, c(json!({ "max_tokens": i64::MAX })), 400, Some("max_tokens")),
        (chat, c(json!({ "block_length": i64::MAX })), 400, Some("block_length")),
        (chat, c(json!({ "block_length": max_positions + 1 })), 400, Some("block_length")),
        (chat, c(json!({ "temperature": -1 })), 400, Some("temperature")),
        (chat, c(json!({ "temperature": 3 })), 400, Some("temperature")),
        (chat, c(json!({ "top_p": 0 })), 400, Some("top_p")),
        (chat, c(json!({ "top_k": -1 })), 400, Some("top_k")),
        (chat, c(json!({ "n": 2 })), 400, Some("n")),
        (chat, c(json!({ "seed": "x" })), 400, Some("seed")),
        (chat, c(json!({ "stream": "yes" })), 400, Some("stream")),
        (chat, c(json!({ "stop": ["a", "b", "c", "d", "e"] })), 400, Some("stop")),
        (chat, c(json!({ "stop": "" })), 400, Some("stop")),
        (chat, c(json!({ "stop": 5 })), 400, Some("stop")),
        (chat, c(json!({ "presence_penalty": 0.5 })), 400, Some("presence_penalty")),
        (chat, c(json!({ "tools": [{ "type": "function" }] })), 400, Some("tools")),
        (chat, c(json!({ "model": "gpt-4o" })), 404, None),
        (chat, chat_body(&long, json!({})).to_string(), 400, Some("messages")),
        (cmpl, json!({ "prompt": long }).to_string(), 400, Some("prompt")),
        (cmpl, json!({ "prompt": [0, -1] }).to_string(), 400, Some("prompt")),
        (cmpl, json!({ "prompt": [u32::MAX] }).to_string(), 400, Some("prompt")),
        (cmpl, json!({ "prompt": ["a", "b"] }).to_string(), 400, Some("prompt")),
        (cmpl, json!({ "prompt": {"text": "a"} }).to_string(), 400, Some("prompt")),
        (cmpl, p(json!({ "echo": true })), 400, Some("echo")),
        // An empty prompt is not a request with 0 prompt tokens.
        (cmpl, p(json!({ "prompt": "" })), 400, Some("prompt")),
        (cmpl, p(json!({ "prompt": [[]] })), 400, Some("prompt")),
        (cmpl, p(json!({ "prompt": [] })), 400, Some("prompt")),
        // Decoder fields are checked like the others.
        (cmpl, p(json!({ "decoder": "llada9" })), 400, Some("decoder")),
        (cmpl, p(json!({ "mode": "fast" })), 400, Some("mode")),
        (cmpl, p(json!({ "editing_threshold": -1 })), 400, Some("editing_threshold")),
        (cmpl, p(json!({ "max_post_steps": 100000000 })), 400, Some("max_post_steps")),
        (cmpl, p(json!({ "suffix": "x" })), 400, Some("suffix")),
        (cmpl, p(json!({ "logprobs": 3 })), 400, Some("logprobs")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_never_hurt_the_server() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let cases = bad_requests(&s.model);
    let max = s.model.config.max_position_embeddings;
    for (path, body, status, param) in &cases {
        let r = s
            .client
            .post(s.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), *status, "{path} {body}");
        let v: Value = r.json().await.unwrap();
        let e = &v["error"];
        assert!(!e["message"].as_str().unwrap().is_empty(), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], *p, "{body}: {v}");
        }
        if body.len() > max {
            assert_eq!(e["code"], "context_length_exceeded", "{v}");
        }
    }
    // Routing errors are JSON too.
    let r = s.client.get(s.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    let r = s
        .client
        .get(s.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
    // A body over the size limit (refused from its declared length, before it is read).
    let huge = format!("{{\"prompt\": \"{}\"}}", "x".repeat(9 << 20));
    let r = s
        .client
        .post(s.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // The unread rest of the body makes the connection unusable: the server must say so, or a
    // keep-alive client sends its next request into a closed socket.
    assert_eq!(r.headers()["connection"], "close");
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());

    // Nothing reached the model, every refusal was counted, and the server still answers.
    assert_eq!(s.metric("unmask_forwards_total").await, 0.0);
    assert_eq!(
        s.metric("unmask_requests_finished_total{outcome=\"invalid\"}")
            .await,
        cases.len() as f64
    );
    assert_eq!(s.metric("unmask_http_errors_total").await, 1.0);
    let (st, v) = s
        .post(
            "/v1/chat/completions",
            &chat_body("What is 23+45?", json!({})),
        )
        .await;
    assert_eq!(
        (st, v["choices"][0]["message"]["content"].as_str()),
        (200, Some("68"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_and_steps() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let qs = questions(&s.model.dir, 2);
    let (mut prompt, mut completion) = (0, 0);
    for (i, q) in qs.iter().enumerate() {
        let (st, v) = if i == 0 {
            s.post("/v1/chat/completions", &chat_body(q, json!({})))
                .await
        } else {
            let p = s.model.tokenizer.render_chat(&user(q), true).unwrap();
            s.post("/v1/completions", &json!({ "prompt": p })).await
        };
        assert_eq!(st, 200);
        prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();
        completion += v["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = |n: &str| metric_value(&text, n).unwrap_or_else(|| panic!("{n}:\n{text}"));
    assert_eq!(m("unmask_requests_total{endpoint=\"chat\"}"), 1.0);
    assert_eq!(m("unmask_requests_total{endpoint=\"completions\"}"), 1.0);
    assert_eq!(
        m("unmask_requests_finished_total{outcome=\"completed\"}"),
        2.0
    );
    assert_eq!(m("unmask_prompt_tokens_total"), prompt as f64);
    assert_eq!(m("unmask_completion_tokens_total"), completion as f64);
    let forwards = m("unmask_forwards_total");
    assert!(forwards >= 2.0);
    assert_eq!(m("unmask_step_seconds_count"), forwards);
    assert_eq!(m("unmask_step_seconds_bucket{le=\"+Inf\"}"), forwards);
    assert!(m("unmask_step_seconds_sum") > 0.0);
    assert_eq!(m("unmask_queue_depth"), 0.0);
    assert_eq!(m("unmask_queue_capacity"), 4.0);
    assert_eq!(m("unmask_requests_running"), 0.0);
    assert!(text.contains("# TYPE unmask_step_seconds histogram"));
    // Per request: its wait in the queue, its first forward, the forwards after it.
    for h in ["queue", "prefill", "decode"] {
        let name = format!("unmask_request_{h}_seconds");
        assert_eq!(m(&format!("{name}_count")), 2.0, "{name}");
        assert_eq!(m(&format!("{name}_bucket{{le=\"+Inf\"}}")), 2.0, "{name}");
    }
    assert!(m("unmask_request_prefill_seconds_sum") > 0.0);
}

/// A chat's next turn re-sends the history: its whole blocks come from the K/V the last request
/// left in the backend (`usage.prompt_tokens_details.cached_tokens`, the metrics), and the
/// answer is the decoder's on a fresh backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_turn_reuses_the_cache_and_answers_the_same() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let m = s.model.clone();
    // A system prompt longer than a block, so that whole blocks are shared.
    let system = "You add two numbers and answer with the sum only. ".repeat(6);
    let turn1 = json!([
        { "role": "system", "content": system },
        { "role": "user", "content": "What is 23+45?" },
    ]);
    let (st, v1) = s
        .post(
            "/v1/chat/completions",
            &json!({ "model": "test-model", "messages": turn1 }),
        )
        .await;
    assert_eq!(st, 200, "{v1}");
    assert_eq!(v1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let answer = v1["choices"][0]["message"]["content"].as_str().unwrap();
    let history = [
        Message {
            role: "system".into(),
            content: system.clone(),
        },
        Message {
            role: "user".into(),
            content: "What is 23+45?".into(),
        },
        Message {
            role: "assistant".into(),
            content: answer.into(),
        },
        Message {
            role: "user".into(),
            content: "What is 12+30?".into(),
        },
    ];
    let mut turn2 = turn1.clone();
    for msg in &history[2..] {
        turn2
            .as_array_mut()
            .unwrap()
            .push(json!({ "role": msg.role, "content": msg.content }));
    }
    let (st, v2) = s
        .post(
            "/v1/chat/completions",
            &json!({ "model": "test-model", "messages": turn2 }),
        )
        .await;
    assert_eq!(st, 200, "{v2}");
    let prompt = m.tokenizer.encode_chat(&history).unwrap();
    let p = params_for(&m, &json!({}));
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached as usize >= p.block_length && (cached as usize).is_multiple_of(p.block_length),
        "cached {cached} in blocks of {}",
        p.block_length
    );
    assert_eq!(v2["usage"]["prompt_tokens"], prompt.len());
    let (text, n, _) = expected(&m, &prompt, &p);
    assert_eq!(v2["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v2["usage"]["completion_tokens"], n);
    assert_eq!(
        s.metric("unmask_prompt_tokens_cached_total").await,
        cached as f64
    );
}

/// A config that claims a huge context: one request asking for a billion tokens is refused with
/// the context error, the CLI's `--gen-length` likewise, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billion_tokens_is_refused_not_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = unmask_tests::copy_fixture(ADD_MODEL, &tmp.path().join("huge-context"));
    let cfg = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["max_position_embeddings"] = json!(1u64 << 40);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let model = std::sync::Arc::new(unmask_core::Model::open(&dir).unwrap());
    assert!(model.context_limit() <= unmask_core::decode::MAX_CONTEXT);
    let s = start(model, 4, cpu()).await;
    for body in [
        json!({ "prompt": "hi", "max_tokens": 1_000_000_000 }),
        json!({ "prompt": "hi", "max_tokens": 1u64 << 62 }),
    ] {
        let (st, v) = s.post("/v1/completions", &body).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    }
    let r = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (st, _) = s
        .post(
            "/v1/completions",
            &json!({ "prompt": "hi", "max_tokens": 4 }),
        )
        .await;
    assert_eq!(st, 200);
}

/// A server for a copy of the addition model whose chat template loops until its fuel runs out
/// (about 2 s).
async fn looping_template_server(tmp: &std::path::Path) -> TestServer {
    let dir = unmask_tests::copy_fixture(ADD_MODEL, &tmp.join("looping-template"));
    let cfg = dir.join("tokenizer_config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["chat_template"] =
        json!("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
    std::fs::write(&cfg, v.to_string()).unwrap();
    start(std::sync::Arc::new(Model::open(&dir).unwrap()), 4, cpu()).await
}

/// A chat template that loops: each request fails alone with a 400, in bounded time, and the
/// async threads stay free (`/health` answers while two such renders run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_template_fails_its_request_only() {
    let tmp = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(looping_template_server(tmp.path()).await);
    let renders: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.post("/v1/chat/completions", &chat_body("hi", json!({})))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    let r = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    for r in renders {
        let (st, v) = r.await.unwrap();
        assert_eq!(st, 400, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("template instructions"),
            "{v}"
        );
    }
}

/// A client that gives up while its chat template renders stops the render: it is counted as
/// cancelled almost at once, not after the template's fuel runs out (about 2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_its_template_render() {
    let tmp = tempfile::tempdir().unwrap();
    let s = looping_template_server(tmp.path()).await;
    let t = std::time::Instant::now();
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body("hi", json!({})))
        .timeout(std::time::Duration::from_millis(100))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    s.wait_metric(
        "unmask_requests_finished_total{outcome=\"cancelled\"}",
        |v| v == 1.0,
    )
    .await;
    assert!(
        t.elapsed() < std::time::Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        s.metric("unmask_requests_finished_total{outcome=\"invalid\"}")
            .await,
        0.0
    );
}

/// Only JSON bodies start generations, and CORS is granted to the configured origin alone (the
/// test server allows `http://allowed.example`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_only_and_cors_for_the_configured_origin() {
    let s = start(load(ADD_MODEL), 4, cpu()).await;
    let body = json!({ "prompt": "1+1=", "max_tokens": 2 }).to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut r = s.client.post(s.url("/v1/completions")).body(body.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 415, "{ct:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unsupported_media_type", "{v}");
    }
    let ok = s
        .client
        .post(s.url("/v1/completions"))
        .header("content-type", "application/json; charset=utf-8")
        .header("origin", "http://allowed.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://allowed.example"
    );
    // Another origin gets no CORS headers, and its preflight is not granted.
    let other = s
        .client
        .post(s.url("/v1/completions"))
        .header("content-type", "application/json")
        .header("origin", "http://evil.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    for (origin, granted) in [
        ("http://allowed.example", true),
        ("http://evil.example", false),
    ] {
        let r = s
            .client
            .request(reqwest::Method::OPTIONS, s.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers().get("access-control-allow-origin").is_some(),
            granted,
            "{origin}"
        );
    }
}

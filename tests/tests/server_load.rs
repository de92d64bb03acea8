//! The server under concurrent clients over real HTTP on 127.0.0.1: answers stay correct and
//! seeded sampling stays reproducible, a full queue answers 429, and a client that goes away
//! cancels its generation (seen in /metrics). A gate in front of the backend holds the worker
//! busy so the queue states are reached deterministically, not by timing.

mod server_support;

use futures_util::future::join_all;
use serde_json::{json, Value};
use server_support::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const FINISHED: &str = "unmask_requests_finished_total";

fn outcome(o: &str) -> String {
    format!("{FINISHED}{{outcome=\"{o}\"}}")
}

/// Text of one request, streamed or not.
async fn answer(s: &TestServer, body: Value, stream: bool) -> String {
    if stream {
        let mut b = body;
        b["stream"] = json!(true);
        streamed_text(&chunks(&s.stream("/v1/chat/completions", &b).await))
    } else {
        let (st, v) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Each question's answer from a generation alone, with the request body `body(q)` gives.
fn alone(m: &unmask_core::Model, qs: &[String], body: impl Fn(&str) -> Value) -> Vec<String> {
    qs.iter()
        .map(|q| {
            let p = m.tokenizer.encode_chat(&user(q)).unwrap();
            expected(m, &p, &params_for(m, &body(q))).0
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_each_get_their_own_answer() {
    let s = Arc::new(start(load(ADD_MODEL), 64, cpu()).await);
    let m = s.model.clone();
    let qs = questions(&m.dir, 6);
    let want = alone(&m, &qs, |_| json!({}));
    let tasks = (0..qs.len() * 2).map(|i| {
        let (s, q) = (s.clone(), qs[i % qs.len()].clone());
        tokio::spawn(async move { answer(&s, chat_body(&q, json!({})), i % 2 == 1).await })
    });
    let got: Vec<String> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &want[i % qs.len()], "{}", qs[i % qs.len()]);
    }
    assert_eq!(s.metric(&outcome("completed")).await, (qs.len() * 2) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_decode_together_and_answer_as_alone() {
    let gate = Arc::new(Gate::default());
    let model = load(ADD_MODEL);
    let qs = questions(&model.dir, 8);
    let want = alone(&model, &qs, |_| json!({}));
    eight_clients(model, gated_batched(gate.clone(), 8), gate, &qs, want).await;
}

/// The same on the wgpu backend (lavapipe in CI): its batched passes answer as it does alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_on_wgpu_decode_together_and_answer_as_alone() {
    let model = load(ADD_MODEL);
    let Some(mut one) = wgpu_backend(&model, 1) else {
        return;
    };
    let qs = questions(&model.dir, 8);
    let want: Vec<String> = qs
        .iter()
        .map(|q| {
            let p = model.tokenizer.encode_chat(&user(q)).unwrap();
            expected_on(one.as_mut(), &model, &p, &params_for(&model, &json!({}))).0
        })
        .collect();
    let gate = Arc::new(Gate::default());
    eight_clients(model, gated_wgpu(gate.clone(), 8), gate, &qs, want).await;
}

/// Eight clients at once, the first holding the worker at the gate while the other seven
/// queue: every answer is `want`'s and /metrics shows forwards of more than one request.
async fn eight_clients(
    model: Arc<unmask_core::Model>,
    backend: unmask_server::BackendFactory,
    gate: Arc<Gate>,
    qs: &[String],
    want: Vec<String>,
) {
    let s = Arc::new(start(model, 64, backend).await);
    assert_eq!(s.metric("unmask_max_batch").await, 8.0);
    // The first request holds the worker at the gate while the other seven queue; once it
    // opens they join the first at its next step.
    gate.close();
    let mut tasks = Vec::new();
    for (i, q) in qs.iter().enumerate() {
        let (s2, q) = (s.clone(), q.clone());
        tasks.push(tokio::spawn(async move {
            answer(&s2, chat_body(&q, json!({})), i % 2 == 1).await
        }));
        if i == 0 {
            s.wait_metric("unmask_requests_running", |v| v == 1.0).await;
        }
    }
    s.wait_metric("unmask_queue_depth", |v| v == 7.0).await;
    gate.open();
    let got: Vec<String> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, want);
    assert_eq!(s.metric(&outcome("completed")).await, 8.0);
    let text = s.metrics_text().await;
    let m = |n: &str| metric_value(&text, n).unwrap_or_else(|| panic!("{n} missing"));
    let batches = m("unmask_batch_size_count");
    assert_eq!(batches, m("unmask_forwards_total"));
    assert!(
        m("unmask_batch_size_bucket{le=\"1\"}") < batches,
        "no forward held more than one request:\n{text}"
    );
    assert!(m("unmask_batch_size_bucket{le=\"6\"}") < batches, "{text}");
    assert_eq!(m("unmask_batch_size_bucket{le=\"8\"}"), batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_prompt_that_joins_a_batch_is_prefilled_in_chunks_and_answers_as_alone() {
    let gate = Arc::new(Gate::default());
    let s = Arc::new(start(load(ADD_MODEL), 64, gated_batched(gate.clone(), 4)).await);
    let m = s.model.clone();
    let qs = questions(&m.dir, 2);
    // The second question behind a long preamble: more than two default chunks (256) of
    // prompt before its first window.
    let long = format!("{} {}", "Add the numbers. ".repeat(150), qs[1]);
    let long_len = m.tokenizer.encode_chat(&user(&long)).unwrap().len();
    assert!(
        long_len > 2 * 256 + 32,
        "the long prompt has {long_len} tokens"
    );
    let both = vec![qs[0].clone(), long];
    let want = alone(&m, &both, |_| json!({}));
    // The first request holds the worker at the gate; the long one queues and joins it.
    gate.close();
    let first = {
        let (s2, q) = (s.clone(), both[0].clone());
        tokio::spawn(async move { answer(&s2, chat_body(&q, json!({})), true).await })
    };
    s.wait_metric("unmask_requests_running", |v| v == 1.0).await;
    let second = {
        let (s2, q) = (s.clone(), both[1].clone());
        tokio::spawn(async move { answer(&s2, chat_body(&q, json!({})), false).await })
    };
    s.wait_metric("unmask_queue_depth", |v| v == 1.0).await;
    gate.open();
    let got = vec![first.await.unwrap(), second.await.unwrap()];
    assert_eq!(got, want);
    let chunks = s.metric("unmask_prefill_chunks_total").await;
    assert!(chunks >= 2.0, "{chunks} prefill chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_a_batch_leaves_the_others_untouched() {
    let s = Arc::new(start(load(ADD_MODEL), 8, cpu_batched(4)).await);
    let m = s.model.clone();
    let qs = questions(&m.dir, 4);
    let want = alone(&m, &qs[1..], |q| long_request(q, false));
    // The first client streams and goes away once all four decode together.
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&long_request(&qs[0], true))
        .send();
    let leaver = tokio::spawn(async move {
        let r = r.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        drop(r);
    });
    let others: Vec<_> = qs[1..]
        .iter()
        .map(|q| {
            let (s, q) = (s.clone(), q.clone());
            tokio::spawn(async move { answer(&s, long_request(&q, false), false).await })
        })
        .collect();
    s.wait_metric("unmask_requests_running", |v| v == 4.0).await;
    leaver.abort();
    let _ = leaver.await;
    let got: Vec<String> = join_all(others)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, want);
    s.wait_metric(&outcome("cancelled"), |v| v == 1.0).await;
    assert_eq!(s.metric(&outcome("completed")).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seed_gives_the_same_text_under_load() {
    // Batched: each request samples with its own seed whatever it decodes with.
    let s = Arc::new(start(load(ADD_MODEL), 64, cpu_batched(4)).await);
    let qs = questions(&s.model.dir, 2);
    let body = |q: &str, seed: u64| {
        chat_body(
            q,
            json!({ "temperature": 2.0, "seed": seed, "max_tokens": 8, "block_length": 8, "threshold": 0.5 }),
        )
    };
    let seeds = [1u64, 2, 3, 4, 5];
    // Alone first.
    let mut alone = BTreeMap::new();
    for q in &qs {
        for &seed in &seeds {
            alone.insert((q.clone(), seed), answer(&s, body(q, seed), false).await);
        }
    }
    // The seed matters: sampling is really on (otherwise this test could not fail).
    let distinct: std::collections::BTreeSet<&String> = alone.values().collect();
    assert!(distinct.len() > qs.len(), "{alone:?}");
    // Then all at once, three times each, streamed and not, interleaved.
    let mut tasks = Vec::new();
    for round in 0..3 {
        for q in &qs {
            for &seed in &seeds {
                let (s, b, q) = (s.clone(), body(q, seed), q.clone());
                tasks.push(tokio::spawn(async move {
                    (
                        (q, seed),
                        answer(&s, b, (round + seed as usize) & 1 == 0).await,
                    )
                }));
            }
        }
    }
    for r in join_all(tasks).await {
        let (key, text) = r.unwrap();
        assert_eq!(text, alone[&key], "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429() {
    let gate = Arc::new(Gate::default());
    let s = Arc::new(start(load(ADD_MODEL), 1, gated(gate.clone())).await);
    let q = questions(&s.model.dir, 1).remove(0);
    gate.close();
    // A runs (held at the gate), B waits in the queue of one: C is one too many.
    let a = tokio::spawn({
        let (s, q) = (s.clone(), q.clone());
        async move { answer(&s, chat_body(&q, json!({})), true).await }
    });
    s.wait_metric("unmask_requests_running", |v| v == 1.0).await;
    let b = tokio::spawn({
        let (s, q) = (s.clone(), q.clone());
        async move { answer(&s, chat_body(&q, json!({})), false).await }
    });
    s.wait_metric("unmask_queue_depth", |v| v == 1.0).await;
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&chat_body(&q, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("busy"));
    assert_eq!(s.metric(&outcome("rejected")).await, 1.0);
    // Streams get the same answer.
    let mut body = chat_body(&q, json!({}));
    body["stream"] = json!(true);
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);

    gate.open();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let p = s.model.tokenizer.encode_chat(&user(&q)).unwrap();
    let want = expected(&s.model, &p, &params_for(&s.model, &json!({}))).0;
    assert_eq!((a.as_str(), b.as_str()), (want.as_str(), want.as_str()));
    assert_eq!(s.metric(&outcome("completed")).await, 2.0);
    assert_eq!(s.metric("unmask_queue_depth").await, 0.0);
    // Room again.
    assert_eq!(answer(&s, chat_body(&q, json!({})), false).await, want);
}

/// A long generation: one token per step, many blocks.
fn long_request(q: &str, stream: bool) -> Value {
    chat_body(
        q,
        json!({ "threshold": 1.0, "block_length": 32, "steps": 32, "max_tokens": 256, "stream": stream }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_cancels_its_generation() {
    let gate = Arc::new(Gate::default());
    let s = Arc::new(start(load(ADD_MODEL), 8, gated(gate.clone())).await);
    let m = s.model.clone();
    let q = questions(&m.dir, 1).remove(0);
    // Forwards the whole generation would take.
    let p = m.tokenizer.encode_chat(&user(&q)).unwrap();
    let full = forwards_alone(&m, &p, &params_for(&m, &long_request(&q, false)));
    assert!(
        full >= 8,
        "the long request must take many forwards ({full})"
    );

    for (round, stream) in [(1.0, true), (2.0, false)] {
        gate.close();
        let before = s.metric("unmask_forwards_total").await;
        let r = s
            .client
            .post(s.url("/v1/chat/completions"))
            .json(&long_request(&q, stream))
            .send();
        let pending = tokio::spawn(async move {
            // Streams: the headers come at once; hold the body, then drop it all.
            let r = r.await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            drop(r);
        });
        s.wait_metric("unmask_requests_running", |v| v == 1.0).await;
        pending.abort();
        let _ = pending.await;
        // Give the server a moment to see the close; cancelling needs no more than that.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        gate.open();
        s.wait_metric(&outcome("cancelled"), |v| v == round).await;
        s.wait_metric("unmask_requests_running", |v| v == 0.0).await;
        let used = s.metric("unmask_forwards_total").await - before;
        eprintln!("stream={stream}: {used} of {full} forwards before the cancel took effect");
        assert!(
            used < full as f64 / 2.0,
            "stream={stream}: {used} of {full} forwards ran after the client left"
        );
        assert_eq!(s.metric(&outcome("completed")).await, 0.0);
    }

    // A request that leaves while still queued never reaches the model.
    gate.close();
    let a = tokio::spawn({
        let (s, q) = (s.clone(), q.clone());
        async move { answer(&s, chat_body(&q, json!({})), false).await }
    });
    s.wait_metric("unmask_requests_running", |v| v == 1.0).await;
    let queued = tokio::spawn({
        let s = s.clone();
        let body = long_request(&q, false);
        async move { s.post("/v1/chat/completions", &body).await }
    });
    s.wait_metric("unmask_queue_depth", |v| v == 1.0).await;
    queued.abort();
    let _ = queued.await;
    // Let the client's close reach the server before the worker looks at the queue.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = s.metric("unmask_forwards_total").await;
    gate.open();
    let a = a.await.unwrap();
    s.wait_metric(&outcome("cancelled"), |v| v == 3.0).await;
    let want = expected(&m, &p, &params_for(&m, &json!({})));
    assert_eq!(a, want.0);
    // Only A's forwards ran.
    let a_forwards = forwards_alone(&m, &p, &params_for(&m, &json!({})));
    assert_eq!(
        s.metric("unmask_forwards_total").await - before,
        a_forwards as f64
    );
    assert_eq!(s.metric("unmask_queue_depth").await, 0.0);
}

/// Forwards the server's generation takes for this prompt when nobody interrupts it.
fn forwards_alone(m: &unmask_core::Model, prompt: &[u32], p: &unmask_core::DecodeParams) -> usize {
    let mut backend =
        unmask_core::ReferenceBackend::new(m.graph.clone(), &m.weights, &mut |_, _| {}).unwrap();
    unmask_server::completion::complete(
        m,
        &mut backend,
        &mut Default::default(),
        prompt,
        p,
        Vec::new(),
        Vec::new(),
        &mut |_| true,
    )
    .unwrap()
    .forwards
}

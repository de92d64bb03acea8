//! Shared by the `server_*` tests: the server started in-process on 127.0.0.1 (a free port),
//! a backend whose steps can be paused (to hold the worker busy deterministically), a reader
//! for `/metrics` and for event streams, and the expected answer computed by the decoder itself.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use unmask_core::backend::SlotStep;
use unmask_core::decode::defaults::ModelDefaults;
use unmask_core::decode::Decoder;
use unmask_core::{
    generate, Backend, DecodeParams, Message, Model, ReferenceBackend, Result, Step, StepOutput,
};
use unmask_server::http::HttpLimits;
use unmask_server::{BackendFactory, ServerConfig};

pub const ADD_MODEL: &str = "tiny-llada2-add";

pub struct TestServer {
    pub base: String,
    pub model: Arc<Model>,
    pub model_id: String,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

pub fn load(name: &str) -> Arc<Model> {
    Arc::new(Model::open(&unmask_tests::fixture(name)).expect("fixture loads"))
}

pub fn cpu() -> BackendFactory {
    Box::new(|m: &Model| {
        Ok(Box::new(ReferenceBackend::new(
            m.graph.clone(),
            &m.weights,
            &mut |_, _| {},
        )?) as Box<dyn Backend>)
    })
}

/// The cpu backend with `slots` KV caches: up to that many requests decode together.
pub fn cpu_batched(slots: usize) -> BackendFactory {
    Box::new(move |m: &Model| {
        Ok(Box::new(
            ReferenceBackend::with_kernels(
                m.graph.clone(),
                &m.weights,
                unmask_core::reference::Kernels::Fast,
                &mut |_, _| {},
            )?
            .with_slots(slots),
        ) as Box<dyn Backend>)
    })
}

/// Starts the server on a free port of 127.0.0.1 with the model's own defaults.
pub async fn start(model: Arc<Model>, max_queue: usize, backend: BackendFactory) -> TestServer {
    start_with(model, max_queue, backend, HttpLimits::default()).await
}

/// The same with the HTTP layer's limits given.
pub async fn start_with(
    model: Arc<Model>,
    max_queue: usize,
    backend: BackendFactory,
    http: HttpLimits,
) -> TestServer {
    let model_id = "test-model".to_string();
    let state = unmask_server::start(
        model.clone(),
        backend,
        ServerConfig {
            model_id: model_id.clone(),
            max_queue,
            defaults: model_defaults(&model).params(),
            per_decoder: Decoder::ALL
                .iter()
                .map(|&d| model_defaults(&model).params_for(d))
                .collect(),
            cors: Some("http://allowed.example".into()),
            http,
            max_tokens: None,
            // Capped by the backend: the one-slot backends run one request at a time.
            batching: unmask_server::worker::Batching {
                max_batch: Some(8),
                ..Default::default()
            },
        },
    )
    .expect("server starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(unmask_server::serve(listener, state, async {
        let _ = rx.await;
    }));
    TestServer {
        base,
        model,
        model_id,
        client: reqwest::Client::new(),
        shutdown: Some(tx),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// A streamed request: the `data:` payloads in order (the last one is `[DONE]`).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{body}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        sse_data(&r.text().await.unwrap())
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Polls a metric until `ok` holds (the worker runs on its own thread).
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{name} stuck at {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A metric line's value; `name` includes its labels, e.g. `unmask_requests_total{endpoint="chat"}`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The `data:` payloads of an event stream (comments and other fields skipped).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Chunks of a finished stream: every payload before `[DONE]` as JSON; asserts the ending.
pub fn chunks(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// The streamed text of chat (`delta.content`) or completion (`text`) chunks.
pub fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|ch| {
            ch["delta"]["content"]
                .as_str()
                .or(ch["text"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// What the answer must be: the decoder run directly, its tokens cut at the first end-of-turn
/// token and decoded. Returns (text, completion tokens with the end-of-turn, finish reason).
pub fn expected(model: &Model, prompt: &[u32], p: &DecodeParams) -> (String, usize, &'static str) {
    let mut b = ReferenceBackend::new(model.graph.clone(), &model.weights, &mut |_, _| {}).unwrap();
    expected_on(&mut b, model, prompt, p)
}

/// [`expected`] decoded alone on `b`.
pub fn expected_on(
    b: &mut dyn Backend,
    model: &Model,
    prompt: &[u32],
    p: &DecodeParams,
) -> (String, usize, &'static str) {
    let g = generate(
        b,
        &model.special_ids(),
        model.config.max_position_embeddings,
        prompt,
        p,
        &mut |_| true,
    )
    .unwrap();
    let eot = &model.tokenizer.end_of_turn;
    match g.tokens.iter().position(|t| eot.contains(t)) {
        Some(i) => (
            model.tokenizer.decode(&g.tokens[..i]).unwrap(),
            i + 1,
            "stop",
        ),
        None => (
            model.tokenizer.decode(&g.tokens).unwrap(),
            g.tokens.len(),
            "length",
        ),
    }
}

pub fn user(text: &str) -> Vec<Message> {
    vec![Message {
        role: "user".into(),
        content: text.into(),
    }]
}

/// A chat request body for one user message.
pub fn chat_body(text: &str, extra: Value) -> Value {
    let mut b = json!({ "model": "test-model", "messages": [{ "role": "user", "content": text }] });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

pub fn model_defaults(model: &Model) -> ModelDefaults {
    ModelDefaults::from_dir(&model.dir, &model.config, None)
}

/// The model's defaults with a request's decoding fields applied (as the server does).
pub fn params_for(model: &Model, extra: &Value) -> DecodeParams {
    let mut p = match extra.get("decoder").and_then(Value::as_str) {
        Some(d) => model_defaults(model).params_for(d.parse().unwrap()),
        None => model_defaults(model).params(),
    };
    if let Some(v) = extra.get("editing_threshold").and_then(Value::as_f64) {
        p.editing_threshold = v as f32;
    }
    let u = |k: &str| extra.get(k).and_then(Value::as_u64).map(|v| v as usize);
    if let Some(v) = u("max_tokens") {
        p.gen_length = v;
    }
    if let Some(v) = u("block_length") {
        p.block_length = v;
    }
    if let Some(v) = u("steps") {
        p.steps = v;
    }
    if let Some(v) = extra.get("threshold").and_then(Value::as_f64) {
        p.threshold = v as f32;
    }
    if let Some(v) = extra.get("temperature").and_then(Value::as_f64) {
        p.temperature = v as f32;
    }
    if let Some(v) = u("seed") {
        p.seed = v as u64;
    }
    if p.decoder == Decoder::Llada20 {
        p.steps = p.steps.min(p.block_length);
    }
    p
}

/// Questions the addition model was evaluated on (from its golden file).
pub fn questions(dir: &Path, n: usize) -> Vec<String> {
    let eval: Value = unmask_tests::read_json(&dir.join("golden/eval.json"));
    eval["cases"]
        .as_array()
        .unwrap()
        .iter()
        .take(n)
        .map(|c| c["question"].as_str().unwrap().to_string())
        .collect()
}

/// A pause switch for the worker: while closed, every forward waits at the gate.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }
    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.cv.wait(closed).unwrap();
        }
    }
}

/// The reference backend behind a gate.
pub fn gated(gate: Arc<Gate>) -> BackendFactory {
    gated_batched(gate, 1)
}

/// The same with `slots` KV caches: up to that many requests decode together.
pub fn gated_batched(gate: Arc<Gate>, slots: usize) -> BackendFactory {
    Box::new(move |m: &Model| {
        let inner =
            ReferenceBackend::new(m.graph.clone(), &m.weights, &mut |_, _| {})?.with_slots(slots);
        Ok(Box::new(Gated {
            inner: Box::new(inner),
            gate,
        }) as Box<dyn Backend>)
    })
}

/// The wgpu backend with `slots` KV caches (`None`: no adapter here).
pub fn wgpu_backend(m: &Model, slots: usize) -> Option<Box<dyn Backend>> {
    if !unmask_tests::wgpu_or_skip() {
        return None;
    }
    let opts = unmask_wgpu::WgpuOptions {
        slots,
        max_tokens: 256,
        ..Default::default()
    };
    let b = unmask_wgpu::WgpuBackend::new(m.graph.clone(), &m.weights, &opts, &mut |_, _| {});
    Some(Box::new(b.expect("the wgpu backend loads")))
}

/// The wgpu backend behind a gate, with `slots` KV caches.
pub fn gated_wgpu(gate: Arc<Gate>, slots: usize) -> BackendFactory {
    Box::new(move |m: &Model| {
        let inner = wgpu_backend(m, slots).expect("an adapter");
        Ok(Box::new(Gated { inner, gate }) as Box<dyn Backend>)
    })
}

struct Gated {
    inner: Box<dyn Backend>,
    gate: Arc<Gate>,
}

impl Backend for Gated {
    fn name(&self) -> String {
        format!("gated {}", self.inner.name())
    }
    fn step(&mut self, step: &Step) -> Result<StepOutput> {
        self.gate.pass();
        self.inner.step(step)
    }
    fn cached(&self) -> usize {
        self.inner.cached()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn slots(&self) -> usize {
        self.inner.slots()
    }
    fn cached_in(&self, slot: usize) -> usize {
        self.inner.cached_in(slot)
    }
    fn reset_slot(&mut self, slot: usize) {
        self.inner.reset_slot(slot)
    }
    fn step_batch(&mut self, steps: &[SlotStep]) -> Result<Vec<StepOutput>> {
        self.gate.pass();
        self.inner.step_batch(steps)
    }
}

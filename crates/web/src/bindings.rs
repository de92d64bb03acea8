//! The wasm-bindgen classes the worker uses: `Loader` (files in, checked model out) and
//! `Engine` (tokenize, generate step by step with a JS callback per step).

use crate::generator::Generator;
use crate::load::{LoadedModel, ModelLoader, RangeReader, StreamedWeights};
use crate::request::GenerateRequest;
use js_sys::{Function, Promise};
use serde::Serialize;
use std::cell::RefCell;
use std::rc::Rc;
use unmask_core::decode::{DecodeParams, Decoder};
use unmask_core::model::llada2;
use unmask_core::{
    reference::Kernels, Backend, ChatTokenizer, Config, Message, ReferenceBackend, SpecialIds,
    Step, StepOutput,
};
use unmask_wgpu::{WgpuBackend, WgpuOptions};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// The text of a thrown JS value: a string, or an error's `message`.
fn js_message(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| js_sys::Reflect::get(e, &"message".into()).ok()?.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Collects a model's files as the worker fetches them.
#[wasm_bindgen]
pub struct Loader {
    inner: Option<ModelLoader>,
}

#[wasm_bindgen]
impl Loader {
    #[wasm_bindgen(constructor)]
    pub fn new(
        config_json: &[u8],
        tokenizer_json: &[u8],
        tokenizer_config: Option<Vec<u8>>,
    ) -> Result<Loader, JsValue> {
        let inner = ModelLoader::new(config_json, tokenizer_json, tokenizer_config.as_deref())
            .map_err(js_err)?;
        Ok(Loader { inner: Some(inner) })
    }

    /// Bytes of a safetensors file's header (what `add_shard` wants as `head`), from its first
    /// 8 bytes and its length.
    pub fn header_len(first8: &[u8], file_len: f64, name: &str) -> Result<usize, JsValue> {
        ModelLoader::header_len(first8, file_len as u64, name).map_err(js_err)
    }

    /// Registers one safetensors file from its header; `read(start, len)` must return those
    /// bytes of the file as a `Uint8Array`, synchronously (the worker slices a Blob with
    /// `FileReaderSync`). Tensors are read when the backend uploads them, one at a time.
    pub fn add_shard(
        &mut self,
        name: &str,
        file_len: f64,
        head: &[u8],
        read: Function,
    ) -> Result<(), JsValue> {
        self.loader()?
            .add_shard(name, file_len as u64, head, Box::new(JsReader(read)))
            .map_err(js_err)
    }

    /// Checks the model and builds the engine on `backend` ("auto", "webgpu" or "cpu");
    /// `progress(done, total)` is called per weight uploaded. Resolves to an `Engine`.
    /// The loader is used up.
    pub fn build(
        &mut self,
        backend: String,
        progress: Option<Function>,
    ) -> Result<Promise, JsValue> {
        let loader = self
            .inner
            .take()
            .ok_or_else(|| js_err("loader already used"))?;
        Ok(future_to_promise(async move {
            let LoadedModel {
                config,
                tokenizer,
                graph,
                weights,
            } = loader.finish().map_err(js_err)?;
            let ids = tokenizer.ids;
            let ids: SpecialIds = ids.fit(&config);
            // The browser reads no modeling file: 2.2 from config.json, else 2.0 unless a
            // request names its decoder.
            let decoder = if config.block_routing() {
                Decoder::Llada22
            } else {
                Decoder::Llada20
            };
            let (parameters, active_parameters) = llada2::parameter_counts(&config);
            let mut tick = |done: usize, total: usize| {
                if let Some(f) = &progress {
                    let _ = f.call2(
                        &JsValue::NULL,
                        &JsValue::from(done as u32),
                        &JsValue::from(total as u32),
                    );
                }
            };
            let (device, fallback) = Device::open(&backend, graph, &weights, &mut tick).await?;
            let info = Info {
                kind: device.kind(),
                backend: device.name(),
                fallback,
                parameters,
                active_parameters,
                weight_bytes: weights.bytes(),
                layers: config.num_hidden_layers,
                hidden: config.hidden_size,
                experts: config.num_experts,
                vocab: config.vocab_size,
                max_positions: config.max_position_embeddings,
                eos: ids.eos,
                mask: ids.mask,
                decoder,
                defaults: DecodeParams::for_decoder(decoder),
            };
            Ok(JsValue::from(Engine {
                inner: Rc::new(Inner {
                    config,
                    tokenizer,
                    ids,
                    decoder,
                    device: RefCell::new(Some(device)),
                    info: serde_json::to_string(&info).map_err(js_err)?,
                }),
            }))
        }))
    }

    fn loader(&mut self) -> Result<&mut ModelLoader, JsValue> {
        self.inner
            .as_mut()
            .ok_or_else(|| js_err("loader already used"))
    }
}

/// The most weight bytes the CPU backend takes into wasm memory (4 GiB at most on wasm32, which
/// also holds the runtime, the tokenizer and the activations).
const CPU_WEIGHT_LIMIT: u64 = 3 << 30;

/// The backend a model runs on. WebGPU answers asynchronously (its results come back through
/// a promise), so steps go through [`Device::step`], never `Backend::step`.
enum Device {
    Cpu(ReferenceBackend),
    WebGpu(Box<WgpuBackend>),
}

impl Device {
    /// `which`: "webgpu", "cpu", or "auto" (WebGPU, else the CPU with the reason in the second
    /// value).
    async fn open(
        which: &str,
        graph: unmask_core::graph::Graph,
        weights: &StreamedWeights,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Device, Option<String>), JsValue> {
        let cpu = |graph| -> Result<Device, JsValue> {
            // The CPU computes from host memory: every tensor comes in, and a wasm allocation
            // that fails aborts the module, so a model that cannot fit is refused up front.
            if weights.bytes() > CPU_WEIGHT_LIMIT {
                return Err(js_err(format!(
                    "the CPU backend needs all {:.2} GB of weights in wasm memory, which holds \
                     4 GiB at most; use WebGPU for this model",
                    weights.bytes() as f64 / 1e9
                )));
            }
            let store = weights.to_store().map_err(js_err)?;
            // Kernels::Fast: the SIMD128 matmuls (the build enables simd128, .cargo/config.toml),
            // bit for bit the reference's.
            Ok(Device::Cpu(
                ReferenceBackend::with_kernels(graph, &store, Kernels::Fast, &mut |_, _| {})
                    .map_err(js_err)?,
            ))
        };
        match which {
            "cpu" => Ok((cpu(graph)?, None)),
            "webgpu" => Ok((
                Device::WebGpu(Box::new(
                    open_webgpu(graph, weights, progress)
                        .await
                        .map_err(js_err)?,
                )),
                None,
            )),
            "auto" => match open_webgpu(graph.clone(), weights, progress).await {
                Ok(b) => Ok((Device::WebGpu(Box::new(b)), None)),
                Err(e) => match cpu(graph) {
                    Ok(d) => Ok((d, Some(format!("WebGPU: {e}")))),
                    Err(c) => Err(js_err(format!("WebGPU: {e}; CPU: {}", js_message(&c)))),
                },
            },
            other => Err(js_err(format!(
                "unknown backend `{other}` (known: auto, webgpu, cpu)"
            ))),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "cpu",
            Device::WebGpu(_) => "webgpu",
        }
    }

    fn name(&self) -> String {
        match self {
            Device::Cpu(b) => b.name(),
            Device::WebGpu(b) => b.name(),
        }
    }

    fn reset(&mut self) {
        match self {
            Device::Cpu(b) => b.reset(),
            Device::WebGpu(b) => b.reset(),
        }
    }

    async fn step(&mut self, s: &Step<'_>) -> unmask_core::Result<StepOutput> {
        match self {
            Device::Cpu(b) => b.step(s),
            Device::WebGpu(b) => b.step_async(s).await,
        }
    }
}

async fn open_webgpu(
    graph: unmask_core::graph::Graph,
    weights: &StreamedWeights,
    progress: &mut dyn FnMut(usize, usize),
) -> unmask_core::Result<WgpuBackend> {
    WgpuBackend::new_async(graph, weights, &WgpuOptions::default(), progress).await
}

/// A file's byte ranges through a synchronous JS function `(start, len) => Uint8Array`.
struct JsReader(Function);

impl RangeReader for JsReader {
    fn read(&self, start: u64, len: usize) -> unmask_core::Result<Vec<u8>> {
        let v = self
            .0
            .call2(
                &JsValue::NULL,
                &JsValue::from_f64(start as f64),
                &JsValue::from_f64(len as f64),
            )
            .map_err(|e| unmask_core::Error::Weights(js_message(&e)))?;
        let bytes = v.dyn_into::<js_sys::Uint8Array>().map_err(|_| {
            unmask_core::Error::Weights("the file reader did not return a Uint8Array".into())
        })?;
        Ok(bytes.to_vec())
    }
}

#[derive(Serialize)]
struct Info {
    /// "webgpu" or "cpu".
    kind: &'static str,
    backend: String,
    /// Why "auto" did not take WebGPU.
    fallback: Option<String>,
    parameters: u64,
    active_parameters: u64,
    weight_bytes: u64,
    layers: usize,
    hidden: usize,
    experts: usize,
    vocab: usize,
    max_positions: usize,
    eos: u32,
    mask: u32,
    decoder: Decoder,
    defaults: DecodeParams,
}

struct Inner {
    config: Config,
    tokenizer: ChatTokenizer,
    ids: SpecialIds,
    decoder: Decoder,
    /// Taken out while a generation runs (one at a time: the KV cache belongs to it).
    device: RefCell<Option<Device>>,
    info: String,
}

/// A loaded model on a backend.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl Engine {
    /// JSON: backend name, model sizes, special ids, default options.
    pub fn info(&self) -> String {
        self.inner.info.clone()
    }

    /// Text to ids (special tokens in the text are matched; no chat template).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.inner.tokenizer.encode(text).map_err(js_err)
    }

    /// Ids to text, special tokens kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String, JsValue> {
        self.inner.tokenizer.decode_raw(ids).map_err(js_err)
    }

    /// Renders `messages_json` (`[{"role", "content"}]`) through the chat template.
    pub fn render_chat(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
    ) -> Result<String, JsValue> {
        let messages: Vec<Message> = serde_json::from_str(messages_json).map_err(js_err)?;
        self.inner
            .tokenizer
            .render_chat(&messages, add_generation_prompt)
            .map_err(js_err)
    }

    /// Runs a generation (`request_json`: see `request.rs`). After every step `on_step` is
    /// called with the step's JSON; it may return a promise, which is awaited (the worker uses
    /// that to let messages in between steps); a result of `false` stops the run. Resolves to
    /// the final JSON (`finish: "cancelled"` when stopped).
    pub fn generate(&self, request_json: String, on_step: Function) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let Some(mut device) = inner.device.borrow_mut().take() else {
                return Err(js_err("a generation is already running on this engine"));
            };
            let result = run(&inner, &mut device, &request_json, &on_step).await;
            *inner.device.borrow_mut() = Some(device);
            result.map(|done| JsValue::from_str(&done))
        })
    }
}

async fn run(
    inner: &Inner,
    device: &mut Device,
    request_json: &str,
    on_step: &Function,
) -> Result<String, JsValue> {
    let request = GenerateRequest::from_json(request_json).map_err(js_err)?;
    let params = request.params(inner.decoder).map_err(js_err)?;
    let prompt = request.prompt_ids(&inner.tokenizer).map_err(js_err)?;
    let mut g = Generator::new(
        &inner.tokenizer,
        &inner.ids,
        inner.config.max_position_embeddings,
        prompt,
        &params,
    )
    .map_err(js_err)?;
    let name = device.name();
    device.reset();
    while let Some(step) = g.next_step() {
        let out = device.step(&step).await.map_err(js_err)?;
        let msg = g.apply(&out, &name).map_err(js_err)?;
        let json = serde_json::to_string(&msg).map_err(js_err)?;
        let mut keep = on_step.call1(&JsValue::NULL, &JsValue::from_str(&json))?;
        if keep.has_type::<Promise>() {
            keep = JsFuture::from(Promise::from(keep)).await?;
        }
        if keep.as_bool() == Some(false) {
            break;
        }
    }
    let done = g.finish().map_err(js_err)?;
    serde_json::to_string(&done).map_err(js_err)
}

/// The backends this build can run, by the names `Loader.build` takes.
#[wasm_bindgen]
pub fn backends() -> Vec<String> {
    vec!["webgpu".to_string(), "cpu".to_string()]
}

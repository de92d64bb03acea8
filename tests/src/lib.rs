//! Shared pieces of the conformance suite: where the golden models are, how to read their
//! golden files, and which backends to run them on. Tests read every size and id from the
//! model's own files, so any LLaDA2 directory with a `golden/` folder in this format passes the
//! same way (`UNMASK_GOLDEN_MODELS=dir1:dir2` adds more).

pub mod fuzz;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use unmask_core::decode::Decoder;
use unmask_core::graph::Graph;
use unmask_core::reference::Kernels;
use unmask_core::weights::WeightStore;
use unmask_core::{Backend, DecodeParams, Model, ReferenceBackend};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// A copy of fixture `name` (its top-level files) in `to/name`, to damage or extend in a test.
pub fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    dst
}

/// Model directories that carry `golden/generate.json` / `golden/forward.safetensors`.
pub fn golden_models() -> Vec<PathBuf> {
    let mut dirs = vec![fixture("tiny-llada2"), fixture("tiny-llada2.2")];
    if let Ok(extra) = std::env::var("UNMASK_GOLDEN_MODELS") {
        dirs.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    dirs
}

/// A backend under test, by name.
pub struct BackendCase {
    pub name: &'static str,
    pub make: fn(&Model) -> anyhow::Result<Box<dyn Backend>>,
}

fn make_host(m: &Model, kernels: Kernels) -> anyhow::Result<Box<dyn Backend>> {
    let b = ReferenceBackend::with_kernels(m.graph.clone(), &m.weights, kernels, &mut |_, _| {});
    Ok(Box::new(b?))
}

fn make_reference(m: &Model) -> anyhow::Result<Box<dyn Backend>> {
    make_host(m, Kernels::Reference)
}

/// `--backend cpu`: the reference's interpreter with the fast (SIMD) kernels.
fn make_cpu(m: &Model) -> anyhow::Result<Box<dyn Backend>> {
    make_host(m, Kernels::Fast)
}

fn make_cuda(m: &Model) -> anyhow::Result<Box<dyn Backend>> {
    let opts = unmask_cuda::CudaOptions {
        max_positions: m.config.max_position_embeddings,
        ..Default::default()
    };
    Ok(Box::new(unmask_cuda::CudaBackend::new(
        m.graph.clone(),
        &m.weights,
        opts,
        &mut |_, _| {},
    )?))
}

fn make_wgpu(m: &Model) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(wgpu_with(m, &Default::default())?))
}

/// The wgpu backend of model `m` with `opts` (the tests that set its options).
pub fn wgpu_with(
    m: &Model,
    opts: &unmask_wgpu::WgpuOptions,
) -> unmask_core::Result<unmask_wgpu::WgpuBackend> {
    unmask_wgpu::WgpuBackend::new(m.graph.clone(), &m.weights, opts, &mut |_, _| {})
}

/// Prints `{backend}: SKIPPED ({why})` past the test harness's output capture, so that `cargo
/// test` shows which backends a passing suite did not run on.
pub fn report_skipped(backend: &str, why: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{backend}: SKIPPED ({why})\n").as_bytes());
}

/// Which device backends this build can run here: `(cuda, wgpu)`. A backend whose device is
/// absent is reported as skipped (printed), never counted as passed; `UNMASK_REQUIRE_CUDA=1`
/// (scripts/gpu-check.sh) turns an absent CUDA device into a failure, `UNMASK_REQUIRE_WGPU=1`
/// (CI) an absent adapter.
fn devices_here() -> (bool, bool) {
    (cuda_or_skip(), wgpu_or_skip())
}

/// Whether the suites run backend `name`: `UNMASK_TEST_BACKENDS` (a comma-separated list, e.g.
/// `cuda`) limits them to those (scripts/gpu-check.sh runs only the GPU's backends there, and
/// leaves out a software Vulkan adapter, which would take its whole time budget); unset, every
/// backend this build has and finds a device for runs. A backend left out says so, as one whose
/// device is absent does. The reference backend stays the oracle of the op suite either way.
pub fn backend_wanted(name: &str) -> bool {
    let Ok(list) = std::env::var("UNMASK_TEST_BACKENDS") else {
        return true;
    };
    let wanted = list.split(',').any(|d| d.trim() == name);
    if !wanted {
        report_skipped(name, "not in UNMASK_TEST_BACKENDS");
    }
    wanted
}

/// Whether a wgpu adapter is here (any: `UNMASK_ADAPTER` picks one; CI runs it on lavapipe);
/// if not, says so, or fails under `UNMASK_REQUIRE_WGPU`.
pub fn wgpu_or_skip() -> bool {
    backend_wanted("wgpu") && unmask_wgpu::probe_or_skip().is_some()
}

/// Whether a CUDA device is here; if not, says so (`cuda: SKIPPED (why)`), or fails under
/// `UNMASK_REQUIRE_CUDA`.
pub fn cuda_or_skip() -> bool {
    if !backend_wanted("cuda") {
        return false;
    }
    match unmask_cuda::probe(0) {
        Ok(_) => true,
        Err(e) => {
            let why = e.to_string();
            let why = why.strip_prefix("backend cuda: ").unwrap_or(&why);
            assert!(
                std::env::var_os("UNMASK_REQUIRE_CUDA").is_none(),
                "UNMASK_REQUIRE_CUDA is set but CUDA is unavailable: {why}"
            );
            report_skipped("cuda", why);
            false
        }
    }
}

/// Every backend this build can run here, the reference first, then the fast `cpu`.
pub fn backends() -> Vec<BackendCase> {
    let mut v: Vec<BackendCase> = [
        BackendCase {
            name: "reference",
            make: make_reference,
        },
        BackendCase {
            name: "cpu",
            make: make_cpu,
        },
    ]
    .into_iter()
    .filter(|b| backend_wanted(b.name))
    .collect();
    let (cuda, wgpu) = devices_here();
    if cuda {
        v.push(BackendCase {
            name: "cuda",
            make: make_cuda,
        });
    }
    if wgpu {
        v.push(BackendCase {
            name: "wgpu",
            make: make_wgpu,
        });
    }
    v
}

/// What an op case may force on the backends that have such a knob (others ignore it): small
/// weight bindings reach the split-weight paths, few tokens per pass the chunked paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forced {
    pub weight_binding_limit: Option<u64>,
    pub max_tokens: Option<usize>,
    /// Expert-stack bindings one wgpu expert dispatch reads (default: what the adapter allows).
    pub expert_parts: Option<usize>,
    /// wgpu's matrix-vector kernels reduce in workgroup memory even where the adapter has
    /// subgroups.
    pub no_subgroups: bool,
    /// wgpu's split-KV workgroups take blocks of rows (or one row): `WgpuOptions::split_row_blocks`.
    pub split_row_blocks: Option<bool>,
    /// q8_0 / q4 products against activations quantized per block (`--int8-dots`): the cpu's
    /// `Kernels::Int8`, wgpu's `WgpuOptions::int8_dots`.
    pub int8_dots: bool,
}

/// A device backend built from a bare graph and its weights (the op suite's cases).
pub struct GraphBackend {
    pub name: &'static str,
    /// `Err(why)` for an op past the backend's limits (checked before building).
    pub supports: fn(&Graph, &unmask_core::graph::Op) -> Result<(), String>,
    /// Whether it has the integer products `Forced::int8_dots` asks for.
    pub int8_dots: bool,
    pub make: fn(Graph, &WeightStore, Forced) -> anyhow::Result<Box<dyn Backend>>,
}

/// The device backends this build can run here (the reference backend is the oracle they are
/// compared with, so it is not among them).
pub fn graph_backends() -> Vec<GraphBackend> {
    let (cuda, wgpu) = devices_here();
    let mut v = Vec::new();
    if backend_wanted("cpu") {
        v.push(GraphBackend {
            name: "cpu",
            supports: |_, _| Ok(()),
            int8_dots: true,
            make: |g, store, forced| {
                let kernels = if forced.int8_dots {
                    Kernels::Int8
                } else {
                    Kernels::Fast
                };
                let b = ReferenceBackend::with_kernels(g, store, kernels, &mut |_, _| {});
                Ok(Box::new(b?))
            },
        });
    }
    if cuda {
        v.push(GraphBackend {
            name: "cuda",
            supports: unmask_cuda::supports,
            int8_dots: false,
            make: |g, store, _| {
                let opts = unmask_cuda::CudaOptions {
                    max_positions: 4096,
                    ..Default::default()
                };
                Ok(Box::new(unmask_cuda::CudaBackend::new(
                    g,
                    store,
                    opts,
                    &mut |_, _| {},
                )?))
            },
        });
    }
    if wgpu {
        v.push(GraphBackend {
            name: "wgpu",
            supports: unmask_wgpu::supports,
            int8_dots: true,
            make: |g, store, forced| {
                let mut opts = unmask_wgpu::WgpuOptions {
                    weight_binding_limit: forced.weight_binding_limit,
                    max_expert_parts: forced.expert_parts,
                    split_row_blocks: forced.split_row_blocks,
                    int8_dots: forced.int8_dots,
                    ..Default::default()
                };
                opts.subgroups &= !forced.no_subgroups;
                if let Some(n) = forced.max_tokens {
                    opts.max_tokens = n;
                }
                Ok(Box::new(unmask_wgpu::WgpuBackend::new(
                    g,
                    store,
                    &opts,
                    &mut |_, _| {},
                )?))
            },
        });
    }
    v
}

#[derive(Debug, Deserialize)]
pub struct GenerateGolden {
    /// The decoder every case uses unless it names one (absent: detected from the model).
    #[serde(default)]
    pub decoder: Option<Decoder>,
    pub cases: Vec<GenerateCase>,
}

/// A generation case of `golden/generate*.json`: parameters a case leaves out take the
/// official defaults of its decoder.
#[derive(Debug, Deserialize)]
pub struct GenerateCase {
    pub name: String,
    #[serde(default)]
    pub decoder: Option<Decoder>,
    pub prompt_ids: Vec<u32>,
    pub gen_length: usize,
    pub block_length: usize,
    pub steps: Option<usize>,
    pub threshold: f32,
    pub editing_threshold: Option<f32>,
    pub max_post_steps: Option<usize>,
    pub num_to_transfer: Option<usize>,
    pub minimal_topk: Option<usize>,
    pub max_steps_per_block: Option<usize>,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub eos_early_stop: bool,
    pub mask_id: u32,
    pub eos_id: u32,
    pub delete_token_id: Option<u32>,
    pub split_token_id: Option<u32>,
    pub output_ids: Vec<u32>,
    pub forwards: usize,
    pub trace: Vec<TraceEntry>,
    /// 2.1: edits made by each forward (`null` for a block's last forward).
    #[serde(default)]
    pub edits_per_forward: Option<Vec<Option<usize>>>,
}

/// The window fed to one forward, and (2.2) what that forward wrote.
#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
pub struct TraceEntry {
    pub block_start: usize,
    pub tokens: Vec<u32>,
    /// 2.2's files write these fields flat beside the tokens.
    #[serde(flatten)]
    pub writes: Option<TraceWrites>,
}

/// 2.2's per-forward record (SOURCES.md §7): block positions, ascending.
#[derive(Debug, Deserialize, PartialEq, Eq, Clone)]
pub struct TraceWrites {
    pub m2t: Vec<usize>,
    pub t2t: Vec<usize>,
    pub delete_at: Vec<usize>,
    pub split_at: Vec<usize>,
    pub escapes: usize,
    pub final_round: bool,
}

impl TraceEntry {
    /// The golden form of a decoder event.
    pub fn of(e: &unmask_core::StepEvent) -> Self {
        let rel = |v: Vec<usize>| -> Vec<usize> {
            let mut v: Vec<usize> = v.into_iter().map(|p| p - e.block_start).collect();
            v.sort_unstable();
            v
        };
        TraceEntry {
            block_start: e.block_start,
            tokens: e.window.clone(),
            writes: Some(TraceWrites {
                m2t: rel(e.committed.iter().map(|c| c.0).collect()),
                t2t: rel(e.edited.iter().map(|c| c.0).collect()),
                delete_at: rel(e.deleted.clone()),
                split_at: rel(e.split.clone()),
                escapes: e.escapes,
                final_round: e.final_round,
            }),
        }
    }
}

impl GenerateCase {
    /// The case's parameters over the official defaults of `decoder`.
    pub fn params(&self, decoder: Decoder) -> DecodeParams {
        let d = DecodeParams::for_decoder(decoder);
        DecodeParams {
            decoder,
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps.unwrap_or(d.steps),
            threshold: self.threshold,
            editing_threshold: self.editing_threshold.unwrap_or(d.editing_threshold),
            max_post_steps: self.max_post_steps.unwrap_or(d.max_post_steps),
            num_to_transfer: self.num_to_transfer.unwrap_or(d.num_to_transfer),
            minimal_topk: self.minimal_topk.unwrap_or(d.minimal_topk),
            max_steps_per_block: self.max_steps_per_block.unwrap_or(d.max_steps_per_block),
            temperature: self.temperature,
            // The golden files write the official flag; false is the official default.
            eos_early_stop: Some(self.eos_early_stop),
            ..d
        }
    }
}

/// Every `golden/generate*.json` of a model directory, with its path.
pub fn generate_goldens(dir: &Path) -> Vec<(PathBuf, GenerateGolden)> {
    let Ok(entries) = std::fs::read_dir(dir.join("golden")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("generate") && n.ends_with(".json"))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let g = read_json(&p);
            (p, g)
        })
        .collect()
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tensor of a golden safetensors file as f32 (F32) or i64-as-u32 (I64) values.
pub enum GoldenTensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    Ids(Vec<u32>),
}

pub fn read_golden_tensors(path: &Path) -> std::collections::BTreeMap<String, GoldenTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out = std::collections::BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = match view.dtype() {
            safetensors::Dtype::F32 => GoldenTensor::F32 {
                shape: view.shape().to_vec(),
                data: view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            },
            safetensors::Dtype::I64 => GoldenTensor::Ids(
                view.data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                    .collect(),
            ),
            d => panic!("{name}: unexpected dtype {d:?}"),
        };
        out.insert(name, t);
    }
    out
}

/// One cacheless forward over a golden case's `ids` (block-causal with 32-token blocks, as the
/// forward goldens are made), predicting every row.
pub fn golden_forward(
    backend: &mut dyn Backend,
    model: &Model,
    ids: &[u32],
    capture: unmask_core::Capture,
) -> unmask_core::StepOutput {
    let sp = model.special_ids();
    backend.reset();
    backend
        .step(&unmask_core::Step {
            tokens: ids,
            start: 0,
            keep: 0,
            block_length: 32,
            out_rows: ids.len(),
            sampling: unmask_core::SampleParams::greedy(sp.mask, sp.valid_vocab),
            capture,
        })
        .unwrap()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

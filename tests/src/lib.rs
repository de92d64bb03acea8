//! Shared pieces of the conformance suite: where the golden models are, how to read their
//! golden files, and which backends to run them on. Tests read every size and id from the
//! model's own files, so any LLaDA2 directory with a `golden/` folder in this format passes the
//! same way (`UNMASK_GOLDEN_MODELS=dir1:dir2` adds more).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use unmask_core::{Backend, Model, ReferenceBackend};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Model directories that carry `golden/generate.json` / `golden/forward.safetensors`.
pub fn golden_models() -> Vec<PathBuf> {
    let mut dirs = vec![fixture("tiny-llada2")];
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

fn make_cpu(m: &Model) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(ReferenceBackend::new(
        m.graph.clone(),
        &m.weights,
        &mut |_, _| {},
    )?))
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
    Ok(Box::new(unmask_wgsl::WgpuBackend::new(
        m.graph.clone(),
        &m.weights,
        &Default::default(),
        &mut |_, _| {},
    )?))
}

/// Prints `{backend}: SKIPPED ({why})` past the test harness's output capture, so that `cargo
/// test` shows which backends a passing suite did not run on.
pub fn report_skipped(backend: &str, why: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{backend}: SKIPPED ({why})\n").as_bytes());
}

/// Every backend this build can run here. A backend whose device is absent is reported as
/// skipped (printed), never counted as passed; `UNMASK_REQUIRE_CUDA=1` (scripts/gpu-check.sh)
/// turns an absent CUDA device into a failure, `UNMASK_REQUIRE_WGPU=1` (CI) an absent adapter.
pub fn backends() -> Vec<BackendCase> {
    let mut v = vec![BackendCase {
        name: "cpu",
        make: make_cpu,
    }];
    match unmask_cuda::probe(0) {
        Ok(_) => v.push(BackendCase {
            name: "cuda",
            make: make_cuda,
        }),
        Err(e) => {
            let why = e.to_string();
            let why = why.strip_prefix("backend cuda: ").unwrap_or(&why);
            assert!(
                std::env::var_os("UNMASK_REQUIRE_CUDA").is_none(),
                "UNMASK_REQUIRE_CUDA is set but CUDA is unavailable: {why}"
            );
            report_skipped("cuda", why);
        }
    }
    // wgpu: any adapter (`UNMASK_ADAPTER` picks one); CI runs it on lavapipe and sets
    // UNMASK_REQUIRE_WGPU=1 so that a missing adapter fails instead of skipping.
    if unmask_wgsl::probe_or_skip().is_some() {
        v.push(BackendCase {
            name: "wgpu",
            make: make_wgpu,
        });
    }
    v
}

#[derive(Debug, Deserialize)]
pub struct GenerateGolden {
    pub cases: Vec<GenerateCase>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateCase {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    pub gen_length: usize,
    pub block_length: usize,
    pub steps: usize,
    pub threshold: f32,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub eos_early_stop: bool,
    pub mask_id: u32,
    pub eos_id: u32,
    pub output_ids: Vec<u32>,
    pub forwards: usize,
    pub trace: Vec<TraceEntry>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct TraceEntry {
    pub block_start: usize,
    pub tokens: Vec<u32>,
}

impl GenerateCase {
    pub fn params(&self) -> unmask_core::DecodeParams {
        unmask_core::DecodeParams {
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps,
            threshold: self.threshold,
            temperature: self.temperature,
            eos_early_stop: self.eos_early_stop,
            ..Default::default()
        }
    }
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

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

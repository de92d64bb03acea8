//! `--backend` names and the `auto` choice. Each device crate adds its constructor here.

use crate::progress::LazyBar;
use anyhow::{bail, Result};
use unmask_core::graph::Graph;
use unmask_core::reference::Kernels;
use unmask_core::weights::WeightStore;
use unmask_core::{Backend, Config, Model, ReferenceBackend};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendName {
    /// The best available: CUDA, then a hardware GPU adapter, then cpu (a software adapter such
    /// as llvmpipe only when named with --adapter).
    Auto,
    /// An NVIDIA GPU through CUDA (needs the NVIDIA driver and NVRTC from the CUDA toolkit).
    Cuda,
    /// A GPU through wgpu: Vulkan, Metal or DX12 (lavapipe on a Linux machine without a GPU).
    Wgpu,
    /// The CPU: f32 arithmetic, SIMD matmuls (AVX2 where present), all cores; bit for bit `reference`.
    Cpu,
    /// The f32 reference: plain loops, the oracle the other backends are tested against.
    Reference,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Device to run on.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
    /// wgpu adapter to use: a case-insensitive part of its name (see `unmask devices`).
    #[arg(long, env = "UNMASK_ADAPTER")]
    pub adapter: Option<String>,
    /// Quantize the matrices and embedding table of a full-precision checkpoint while loading.
    #[arg(long, value_enum)]
    pub quantize: Option<crate::commands::quantize::FormatName>,
    /// cpu, wgpu: multiply q8_0 / q4 matrices by activations quantized to 8 bits per block of
    /// 32 (integer dot products, llama.cpp's way): not bit for bit the f32 result (wgpu: the
    /// window kernels, dense and experts).
    #[arg(long)]
    pub int8_dots: bool,
    /// KV-cache slots of the backend (sequences decoded together or kept for reuse): set by
    /// `serve --max-batch` and `bench --batch`, 1 otherwise.
    #[arg(skip = 1usize)]
    pub slots: usize,
    /// `serve` without `--max-batch`: the backend gets twice its own default batch
    /// (`default_max_batch`) in slots instead of `slots`.
    #[arg(skip)]
    pub default_batch_slots: bool,
}

/// Most KV-cache slots a command may ask of a backend.
pub const MAX_SLOTS: usize = 256;

/// `serve`'s requests per batched forward on each backend when `--max-batch` is not given.
/// cpu: a forward's time grows with its rows (measured: 1, 4 and 16 windows in one forward,
/// 8.98, 9.23 and 9.65 tokens/s in total), so a wide batch mostly stretches each request (the
/// load test with widths 4 and 16 differed within its noise: docs/performance.md), and 4 lets
/// a few requests progress together. A GPU's window step reads the same weights for every
/// sequence it holds: wgpu 8 (its KV cache holds every slot in one binding, so more slots
/// shorten each one's context), cuda 16 (slots allocated as used).
pub fn default_max_batch(backend: BackendName) -> usize {
    match backend {
        BackendName::Cuda => 16,
        BackendName::Wgpu => 8,
        BackendName::Auto | BackendName::Cpu | BackendName::Reference => 4,
    }
}

/// Builds the chosen backend with the model's weights, saying on stderr what was chosen.
pub fn create(model: &Model, args: &BackendArgs, quiet: bool) -> Result<Box<dyn Backend>> {
    create_for(&model.config, &model.graph, &model.weights, args, quiet)
}

/// The same from a model's parts: `unmask bench` runs models that exist only in memory
/// (random weights of a published shape), which have no tokenizer.
pub fn create_for(
    config: &Config,
    graph: &Graph,
    weights: &WeightStore,
    args: &BackendArgs,
    quiet: bool,
) -> Result<Box<dyn Backend>> {
    let quantized;
    let weights = match args.quantize {
        Some(f) => {
            quantized = crate::commands::quantize::at_load(graph, weights, f.into())?;
            &quantized
        }
        None => weights,
    };
    if args.int8_dots
        && !matches!(
            args.backend,
            BackendName::Cpu | BackendName::Wgpu | BackendName::Auto
        )
    {
        bail!("--int8-dots is a choice of the cpu and wgpu backends' kernels");
    }
    let fast = if args.int8_dots {
        Kernels::Int8
    } else {
        Kernels::Fast
    };
    let slots = |kind| match args.default_batch_slots {
        true => 2 * default_max_batch(kind),
        false => args.slots,
    };
    let (cuda_slots, wgpu_slots) = (slots(BackendName::Cuda), slots(BackendName::Wgpu));
    let cpu_slots = slots(BackendName::Cpu);
    let adapter = args.adapter.as_deref();
    let mut why = String::new();
    let backend: Box<dyn Backend> = match args.backend {
        BackendName::Cuda => Box::new(cuda(config, graph, weights, cuda_slots)?),
        BackendName::Wgpu => Box::new(wgpu(graph, weights, adapter, wgpu_slots, args.int8_dots)?),
        BackendName::Auto => match try_cuda(config, graph, weights, cuda_slots) {
            Ok(b) => b,
            Err(cuda_why) => match try_wgpu(graph, weights, adapter, wgpu_slots, args.int8_dots) {
                Ok((b, chose)) => {
                    why = format!(" (auto: {cuda_why}; {chose})");
                    b
                }
                Err(wgpu_why) => {
                    why = format!(" (auto: {cuda_why}; {wgpu_why})");
                    Box::new(cpu(graph, weights, fast, cpu_slots)?)
                }
            },
        },
        BackendName::Cpu => Box::new(cpu(graph, weights, fast, cpu_slots)?),
        BackendName::Reference => Box::new(cpu(graph, weights, Kernels::Reference, cpu_slots)?),
    };
    if !quiet {
        eprintln!("backend: {}{why}", backend.name());
    }
    Ok(backend)
}

fn cpu(
    graph: &Graph,
    weights: &WeightStore,
    kernels: Kernels,
    slots: usize,
) -> Result<ReferenceBackend> {
    let mut bar = LazyBar::new("loading weights");
    let b = ReferenceBackend::with_kernels(graph.clone(), weights, kernels, &mut |d, t| {
        bar.update(d, t)
    });
    bar.finish();
    match b {
        Ok(b) => Ok(b.with_slots(slots.clamp(1, MAX_SLOTS))),
        Err(e) => bail!(e),
    }
}

/// Whether the backend asked for by name has its device here (a CUDA GPU, a wgpu adapter),
/// before anything costly is made for it: `bench --shape mini` spends its first minute making
/// random weights, which a machine without the device would make for nothing. `auto`, `cpu`
/// and `reference` always have one.
pub fn check_device(args: &BackendArgs) -> Result<()> {
    match args.backend {
        BackendName::Cuda => {
            unmask_cuda::probe(0)?;
        }
        BackendName::Wgpu => {
            unmask_wgpu::probe(args.adapter.as_deref())?;
        }
        BackendName::Auto | BackendName::Cpu | BackendName::Reference => {}
    }
    Ok(())
}

/// `auto`'s first choice: CUDA when a driver, NVRTC and a GPU are present; otherwise why not.
fn try_cuda(
    config: &Config,
    graph: &Graph,
    weights: &WeightStore,
    slots: usize,
) -> Result<Box<dyn Backend>, String> {
    if let Err(e) = unmask_cuda::probe(0) {
        return Err(e.to_string().replace("backend cuda: ", "no cuda: "));
    }
    cuda(config, graph, weights, slots)
        .map(|b| Box::new(b) as Box<dyn Backend>)
        .map_err(|e| format!("cuda failed to load: {e:#}"))
}

fn cuda(
    config: &Config,
    graph: &Graph,
    weights: &WeightStore,
    slots: usize,
) -> Result<unmask_cuda::CudaBackend> {
    let mut bar = LazyBar::new("loading weights to the GPU");
    let defaults = unmask_cuda::CudaOptions::default();
    let slots = slots.clamp(1, MAX_SLOTS);
    let opts = unmask_cuda::CudaOptions {
        max_positions: config.max_position_embeddings,
        slots,
        max_tokens: pass_tokens(defaults.max_tokens, slots),
        ..defaults
    };
    let b =
        unmask_cuda::CudaBackend::new(graph.clone(), weights, opts, &mut |d, t| bar.update(d, t));
    bar.finish();
    let b = b?;
    eprintln!("cuda kernels: {}", b.kernel_origin());
    Ok(b)
}

/// `auto`'s second choice: a hardware wgpu adapter. A software one (llvmpipe, SwiftShader) is
/// about 10x slower than `cpu` on this VM (README: GPU), so `auto` takes it only when it was asked for by name
/// (`--adapter`, `UNMASK_ADAPTER`). Returns the backend and what was chosen, or why none was.
fn try_wgpu(
    graph: &Graph,
    weights: &WeightStore,
    adapter: Option<&str>,
    slots: usize,
    int8_dots: bool,
) -> Result<(Box<dyn Backend>, String), String> {
    let report = unmask_wgpu::probe(adapter)
        .map_err(|e| e.to_string().replace("backend wgpu: ", "no wgpu: "))?;
    let named =
        adapter.is_some() || std::env::var(unmask_wgpu::ADAPTER_ENV).is_ok_and(|s| !s.is_empty());
    if report.is_cpu && !named {
        return Err(format!(
            "no hardware GPU adapter (only the software adapter {}, slower than cpu; \
             --backend wgpu or --adapter takes it)",
            report.name
        ));
    }
    let kind = if report.is_cpu {
        "the software adapter asked for,"
    } else {
        "a hardware GPU adapter"
    };
    let b = wgpu(graph, weights, adapter, slots, int8_dots)
        .map_err(|e| format!("wgpu failed to load: {e:#}"))?;
    Ok((Box::new(b), format!("{kind} {}", report.name)))
}

/// Tokens per pass for a backend with `slots` KV-cache slots: room for the 32-token windows of
/// as many sequences as one pass holds when they are batched.
fn pass_tokens(default: usize, slots: usize) -> usize {
    default.max(32 * slots.min(unmask_core::step_params::MAX_PASS_SEQS))
}

fn wgpu(
    graph: &Graph,
    weights: &WeightStore,
    adapter: Option<&str>,
    slots: usize,
    int8_dots: bool,
) -> Result<unmask_wgpu::WgpuBackend> {
    let mut bar = LazyBar::new("loading weights to the GPU");
    let defaults = unmask_wgpu::WgpuOptions::default();
    let slots = slots.clamp(1, MAX_SLOTS);
    let opts = unmask_wgpu::WgpuOptions {
        adapter: adapter.map(str::to_string),
        slots,
        // Lowered at load where a buffer would not fit one binding.
        max_tokens: pass_tokens(defaults.max_tokens, slots),
        int8_dots: int8_dots || defaults.int8_dots,
        ..defaults
    };
    let b =
        unmask_wgpu::WgpuBackend::new(graph.clone(), weights, &opts, &mut |d, t| bar.update(d, t));
    bar.finish();
    Ok(b?)
}

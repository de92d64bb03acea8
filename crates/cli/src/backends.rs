//! `--backend` names and the `auto` choice. Each device crate adds its constructor here.

use crate::progress::LazyBar;
use anyhow::{bail, Result};
use unmask_core::graph::Graph;
use unmask_core::weights::WeightStore;
use unmask_core::{Backend, Config, Model, ReferenceBackend};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendName {
    /// The best available: CUDA, then a hardware GPU, then a CPU GPU adapter, then cpu.
    Auto,
    /// An NVIDIA GPU through CUDA (needs the NVIDIA driver and NVRTC from the CUDA toolkit).
    Cuda,
    /// The f32 reference backend (plain Rust, all cores).
    Cpu,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Device to run on.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
    /// Quantize the matrices and embedding table of a full-precision checkpoint while loading.
    #[arg(long, value_enum)]
    pub quantize: Option<crate::commands::quantize::FormatName>,
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
    let mut why = String::new();
    let backend: Box<dyn Backend> = match args.backend {
        BackendName::Cuda => Box::new(cuda(config, graph, weights)?),
        BackendName::Auto => match try_cuda(config, graph, weights) {
            Ok(b) => b,
            Err(cuda_why) => {
                why = format!(" (auto: {cuda_why})");
                Box::new(cpu(graph, weights)?)
            }
        },
        BackendName::Cpu => Box::new(cpu(graph, weights)?),
    };
    if !quiet {
        eprintln!("backend: {}{why}", backend.name());
    }
    Ok(backend)
}

fn cpu(graph: &Graph, weights: &WeightStore) -> Result<ReferenceBackend> {
    let mut bar = LazyBar::new("loading weights");
    let b = ReferenceBackend::new(graph.clone(), weights, &mut |d, t| bar.update(d, t));
    bar.finish();
    match b {
        Ok(b) => Ok(b),
        Err(e) => bail!(e),
    }
}

/// `auto`'s first choice: CUDA when a driver, NVRTC and a GPU are present; otherwise why not.
fn try_cuda(
    config: &Config,
    graph: &Graph,
    weights: &WeightStore,
) -> Result<Box<dyn Backend>, String> {
    if let Err(e) = unmask_cuda::probe(0) {
        return Err(e.to_string().replace("backend cuda: ", "no cuda: "));
    }
    cuda(config, graph, weights)
        .map(|b| Box::new(b) as Box<dyn Backend>)
        .map_err(|e| format!("cuda failed to load: {e:#}"))
}

fn cuda(config: &Config, graph: &Graph, weights: &WeightStore) -> Result<unmask_cuda::CudaBackend> {
    let mut bar = LazyBar::new("loading weights to the GPU");
    let opts = unmask_cuda::CudaOptions {
        max_positions: config.max_position_embeddings,
        ..Default::default()
    };
    let b =
        unmask_cuda::CudaBackend::new(graph.clone(), weights, opts, &mut |d, t| bar.update(d, t));
    bar.finish();
    Ok(b?)
}

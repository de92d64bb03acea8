//! `--backend` names and the `auto` choice. Each device crate adds its constructor here.

use crate::progress::LazyBar;
use anyhow::{bail, Result};
use unmask_core::{Backend, Model, ReferenceBackend};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendName {
    /// The best available: CUDA, then a hardware GPU, then a CPU GPU adapter, then cpu.
    Auto,
    /// The f32 reference backend (plain Rust, all cores).
    Cpu,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Device to run on.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendName,
}

/// Builds the chosen backend with the model's weights, saying on stderr what was chosen.
pub fn create(model: &Model, args: &BackendArgs, quiet: bool) -> Result<Box<dyn Backend>> {
    let backend: Box<dyn Backend> = match args.backend {
        BackendName::Cpu | BackendName::Auto => Box::new(cpu(model)?),
    };
    if !quiet {
        let why = if args.backend == BackendName::Auto {
            " (auto: no GPU backend in this build)"
        } else {
            ""
        };
        eprintln!("backend: {}{why}", backend.name());
    }
    Ok(backend)
}

fn cpu(model: &Model) -> Result<ReferenceBackend> {
    let mut bar = LazyBar::new("loading weights");
    let b = ReferenceBackend::new(model.graph.clone(), &model.weights, &mut |d, t| {
        bar.update(d, t)
    });
    bar.finish();
    match b {
        Ok(b) => Ok(b),
        Err(e) => bail!(e),
    }
}

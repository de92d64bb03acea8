//! `unmask quantize`: write a quantized copy of a model directory (q8_0 or q4 blocks).

use super::inspect::human;
use crate::progress::LazyBar;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use unmask_core::quant::memory::{memory_by_format, FormatMemory};
use unmask_core::quant::{quantize_dir_cancellable, QuantFormat, QuantPlan, DEFAULT_SHARD_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatName {
    /// Blocks of 32 int8 with an f16 scale: 8.5 bits per weight, near lossless.
    #[value(name = "q8_0")]
    Q8_0,
    /// Blocks of 32 four-bit codes with an 8-bit scale and offset: 4.5 bits per weight.
    #[value(name = "q4")]
    Q4,
}

impl From<FormatName> for QuantFormat {
    fn from(f: FormatName) -> Self {
        match f {
            FormatName::Q8_0 => QuantFormat::Q8_0,
            FormatName::Q4 => QuantFormat::Q4,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Full-precision model directory (bf16, f16 or f32 safetensors), or a Hugging Face id.
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory (created; must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum)]
    pub format: FormatName,
    /// Keep the embedding table in its stored precision (matrices are still quantized).
    #[arg(long)]
    pub keep_embedding: bool,
    /// Largest shard in bytes before the weights are split into model-0000N-of-0000M files.
    #[arg(long, default_value_t = DEFAULT_SHARD_BYTES)]
    pub max_shard_bytes: usize,
    /// Print a JSON report (bits per weight, relative RMSE, per-tensor detail).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = super::open_model(&args.model)?;
    let plan = QuantPlan {
        format: args.format.into(),
        embedding: !args.keep_embedding,
    };
    let t0 = Instant::now();
    let mut bar = LazyBar::new(&format!("quantizing to {}", plan.format));
    let interrupted = Arc::new(AtomicBool::new(false));
    watch_signals(interrupted.clone());
    let report = quantize_dir_cancellable(
        &model,
        &args.out,
        &plan,
        args.max_shard_bytes.max(1),
        &mut |d, t| bar.update(d, t),
        &interrupted,
    );
    bar.finish();
    if interrupted.load(Ordering::Relaxed) {
        eprintln!(
            "interrupted: the partial output {} was removed",
            args.out.display()
        );
        std::process::exit(130);
    }
    let report = report.with_context(|| format!("writing {}", args.out.display()))?;
    let elapsed = t0.elapsed().as_secs_f64();
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["elapsed_s"] = elapsed.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}: {} tensors ({} parameters) quantized to {}: {:.3} bits/weight, rel_rmse {:.4}",
        report.out.display(),
        report.quantized_tensors,
        report.quantized_params,
        report.format,
        report.bits_per_weight,
        report.rel_rmse
    );
    println!(
        "kept {} tensors in their stored precision ({} bytes); {} files written in {elapsed:.1} s",
        report.kept_tensors,
        report.kept_bytes,
        report.files.len()
    );
    if let Some(worst) = report
        .tensors
        .iter()
        .max_by(|a, b| a.rel_rmse.total_cmp(&b.rel_rmse))
    {
        println!(
            "largest error: {} (rel_rmse {:.4})",
            worst.name, worst.rel_rmse
        );
    }
    Ok(())
}

/// `--quantize` (any command that loads a model): the plan's tensors packed in memory before
/// the backend takes them; the full-precision originals stay memory-mapped, not copied.
pub fn at_load(
    graph: &unmask_core::graph::Graph,
    weights: &unmask_core::weights::WeightStore,
    format: QuantFormat,
) -> Result<unmask_core::weights::WeightStore> {
    let mut bar = LazyBar::new(&format!("quantizing to {format}"));
    let q = unmask_core::quant::quantize_weights(
        graph,
        weights,
        &QuantPlan::new(format),
        &mut |d, t| bar.update(d, t),
    );
    bar.finish();
    Ok(q.context("--quantize")?.0)
}

/// `inspect`'s lines on what the weights need in each format.
pub fn print_memory_by_format(m: &[FormatMemory]) {
    for f in m {
        let packed = if f.quantized_parameters > 0 {
            format!(
                ", {} parameters packed",
                human(f.quantized_parameters as f64, "")
            )
        } else {
            String::new()
        };
        println!(
            "as {:<8} {} ({:.3} bytes/parameter{packed})",
            f.format,
            human(f.weight_bytes as f64, "B"),
            f.bytes_per_parameter,
        );
    }
}

/// `unmask inspect --shape mini|flash`: a published shape's parameters and weight memory per
/// format, without downloading it.
pub fn inspect_shape(name: &str, json: bool) -> Result<()> {
    let c = unmask_core::synthetic::shape_config(name)?;
    let (parameters, active) = unmask_core::model::llada2::parameter_counts(&c);
    let m = memory_by_format(&c);
    if json {
        let v = serde_json::json!({
            "shape": name,
            "config": c,
            "parameters": parameters,
            "active_parameters": active,
            "memory_by_format": m,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "shape       {name} ({} layers, hidden {}, {} experts)",
        c.num_hidden_layers, c.hidden_size, c.num_experts
    );
    println!(
        "parameters  {} total, {} active per token",
        human(parameters as f64, ""),
        human(active as f64, "")
    );
    print_memory_by_format(&m);
    Ok(())
}

/// Sets `flag` on the first SIGINT or SIGTERM, so that quantization stops at the next tensor and
/// removes what it wrote (a killed process would leave a half-written directory).
fn watch_signals(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            flag.store(true, Ordering::Relaxed);
        });
    });
}

//! `unmask bench`: times the decoding step of a model directory or of a published shape with
//! random weights, and sets it against its memory floor and the autoregressive baseline.

use crate::backends::{self, BackendArgs};
use crate::bench::bandwidth::{self, Bandwidth};
use crate::bench::report::{self, *};
use crate::bench::source::{self, BenchModel, WeightFormat};
use crate::bench::stats::Spread;
use crate::bench::traffic::{forward_traffic, Routing, WeightBytes};
use crate::bench::{host, profile, realrun, workload};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use unmask_core::backend::{Backend, SampleParams};
use unmask_core::model::llada2;
use unmask_core::ReferenceBackend;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["model", "shape"])))]
pub struct Args {
    /// Model directory with real weights (Hugging Face layout), or a Hugging Face id.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Random weights made in memory, no file: `mini`, `flash`, `tiny`, or a directory whose
    /// config.json gives the shape.
    #[arg(long)]
    pub shape: Option<String>,
    /// Keep only the first N layers (the real per-layer cost of a model too big for this machine).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Stored precision of the random weights (with --shape; q8_0 and q4 quantize the bf16 values).
    #[arg(long, value_enum)]
    pub format: Option<WeightFormat>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Cached positions before the timed window.
    #[arg(long, default_value_t = 256)]
    pub prompt_len: usize,
    /// Window (block) length of the timed diffusion step.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Timed forwards per figure.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Untimed forwards before each figure.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Memory bandwidth for the floor, GB/s (default: measured with a large copy).
    #[arg(long)]
    pub bandwidth: Option<f64>,
    /// Tokens committed per forward for the tokens/s estimate (LLaDA2.0-mini's published 2.55).
    #[arg(long, default_value_t = 2.55)]
    pub tokens_per_forward: f64,
    /// Tokens to generate in the real run (default: the golden case's, else 32 for random weights).
    #[arg(long)]
    pub gen_length: Option<usize>,
    /// Denoising steps per block in the real run.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the random weights and prompt.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (the table still goes to stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also time every kernel of the window step on the device (CUDA events, wgpu timestamp
    /// queries, the host clock on cpu) and report the time, bytes and GB/s of each op family.
    #[arg(long)]
    pub profile: bool,
    /// Also time the window step of N sequences at once (each after its own prompt) as one
    /// batched forward, for each N given (comma-separated, e.g. `1,4,16`): ms per forward,
    /// tokens/s per request and in total, bytes per generated token.
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Leave out parts of the report (comma-separated; they are `null` in the JSON): for slow
    /// devices and smoke runs.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<Part>,
}

/// The optional parts of a report, each one or more extra forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The autoregressive baseline.
    Ar,
    /// The window without the KV cache.
    NoCache,
    /// The real `generate()` run (tokens per forward, time to first token).
    RealRun,
}

impl Args {
    fn check(&self) -> Result<()> {
        if self.window == 0 {
            bail!("--window must be at least 1");
        }
        if self.iters == 0 {
            bail!("--iters must be at least 1");
        }
        if !(self.tokens_per_forward.is_finite() && self.tokens_per_forward > 0.0) {
            bail!("--tokens-per-forward must be a positive number");
        }
        if let Some(b) = self.bandwidth {
            if !(b.is_finite() && b > 0.0) {
                bail!("--bandwidth must be a positive number of GB/s");
            }
        }
        if let Some(&n) = self
            .batch
            .iter()
            .find(|&&n| n == 0 || n > backends::MAX_SLOTS)
        {
            bail!(
                "--batch {n}: each width must be in 1..={}",
                backends::MAX_SLOTS
            );
        }
        if self.model.is_some() && self.format.is_some() {
            bail!("--format chooses the precision of --shape's random weights; quantize a model directory while loading with --quantize q8_0|q4");
        }
        Ok(())
    }
}

/// Size of each buffer of the host copy that measures bandwidth: far beyond any cache.
const COPY_BYTES: usize = 256 << 20;

pub fn run(args: Args) -> Result<()> {
    args.check()?;
    backends::check_device(&args.backend)?;
    // Before any work of ours: the load average then is other work on the machine.
    let host = host::Host::describe();
    let note = |s: &str| eprintln!("bench: {s}");
    let mut m = match (&args.model, &args.shape) {
        (Some(arg), _) => {
            let dir = crate::hub::model_dir(arg)?;
            note(&format!("loading {}", dir.display()));
            source::from_dir(&dir, args.layers)?
        }
        (None, Some(shape)) => {
            note(&format!("making random weights of the {shape} shape"));
            let format = args.format.unwrap_or(WeightFormat::Bf16);
            source::synthetic(shape, args.layers, format, args.seed)?
        }
        (None, None) => unreachable!("clap requires --model or --shape"),
    };
    let (p, b) = (args.prompt_len, args.window);
    if p + b > m.config.max_position_embeddings {
        bail!(
            "--prompt-len {p} + --window {b} exceeds the model's {} positions",
            m.config.max_position_embeddings
        );
    }
    let mut backend_args = args.backend.clone();
    if let Some(f) = backend_args.quantize.take() {
        // Quantized here rather than inside the backend's loading, so that the bytes the
        // report counts are the ones the backend reads.
        let format: unmask_core::quant::QuantFormat = f.into();
        note(&format!("quantizing to {}", format.name()));
        m.weights = crate::commands::quantize::at_load(&m.graph, &m.weights, format)?;
        m.format = format.name().to_string();
        m.description = format!("{}, quantized to {} at load", m.description, format.name());
    }
    let sizes = WeightBytes::of(&m.weights);
    backend_args.slots = args.batch.iter().copied().max().unwrap_or(1);
    let t = Instant::now();
    let mut backend = backends::create_for(&m.config, &m.graph, &m.weights, &backend_args, false)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let sp = SampleParams::greedy(m.ids.mask, m.ids.valid_vocab);
    let toks = workload::tokens(&m, p, b, args.seed)?;

    note(&format!("diffusion window: {b} tokens after {p}"));
    let be = backend.as_mut();
    let prefill_ms = workload::prefill(be, &toks.prompt, b, sp)?;
    let step = workload::repeatable_step(&toks.window, p, b, b, sp);
    let window = workload::time_step(be, &step, args.warmup, args.iters)?;

    let kernel_times = if args.profile {
        note("the same window with every kernel timed (--profile)");
        match profile::measure(be, &step, args.warmup.min(1), args.iters) {
            Some(r) => Some(r.context("profiling the window step")?),
            None => bail!(
                "--profile: {} cannot time its kernels (no timestamp queries on this adapter?)",
                be.name()
            ),
        }
    } else {
        None
    };

    let wanted = |part: Part| !args.skip.contains(&part);
    let no_cache = if wanted(Part::NoCache) {
        note("the same window without the KV cache");
        let all: Vec<u32> = toks.prompt.iter().chain(&toks.window).copied().collect();
        let step = workload::repeatable_step(&all, 0, b, b, sp);
        Some(workload::time_step(
            be,
            &step,
            args.warmup.min(1),
            args.iters,
        )?)
    } else {
        None
    };

    let ar = if wanted(Part::Ar) {
        note("autoregressive baseline: one token per forward, causal");
        let prefill_ms = workload::prefill(be, &toks.prompt, 1, sp)?;
        let step = workload::repeatable_step(&toks.window[..1], p, 1, 1, sp);
        Some((
            prefill_ms,
            workload::time_step(be, &step, args.warmup, args.iters)?,
        ))
    } else {
        None
    };

    // The real run under every decoder the model can use; the detected one is `measured`.
    let mut real_runs = Vec::new();
    if wanted(Part::RealRun) {
        for decoder in realrun::decoders(&m) {
            let prompt =
                realrun::real_prompt(&m, &toks.prompt, args.gen_length, args.steps, decoder)?;
            note(&format!("real run ({decoder}): {}", prompt.source));
            real_runs.push(realrun::run(be, &m, &prompt)?);
        }
    }
    let detected = realrun::detected_decoder(&m);
    let real = real_runs.iter().find(|r| r.decoder == detected).cloned();

    let batch = if args.batch.is_empty() {
        None
    } else {
        note(&format!(
            "batched window steps of {:?} sequences",
            args.batch
        ));
        Some(crate::bench::batch::measure(
            be,
            &m,
            &sizes,
            &args.batch,
            (p, b),
            (args.warmup, args.iters),
            args.tokens_per_forward,
            args.seed,
        )?)
    };

    let memory = Memory {
        peak_host_bytes: host::peak_resident_bytes(),
        device_bytes: be.device_memory(),
    };
    let bandwidth = measure_bandwidth(&args, be)?;
    let backend_name = be.name();
    drop(backend);

    let (routing_lists, routing) = match window.routing {
        Some(r) => (
            Some(r),
            "the backend's routing of the timed step".to_string(),
        ),
        None => route_on_host(&m, &toks, sp)?,
    };
    let routing_for = match &routing_lists {
        Some(r) => Routing::Known(r),
        None => Routing::Expected,
    };
    let bytes = forward_traffic(&m.graph, &sizes, p, b, &routing_for);
    let ar_bytes = forward_traffic(&m.graph, &sizes, p, 1, &Routing::Expected);
    let floor = |t: u64| t as f64 / bandwidth.bytes_per_second * 1e3;

    let spread = |ms: &[f64]| Spread::of(ms).expect("at least one timed forward");
    let win = spread(&window.ms);
    let tps_assumed = args.tokens_per_forward * 1e3 / win.median;
    let tps_measured = real
        .as_ref()
        .map(|r| r.tokens_per_forward * 1e3 / win.median);
    let ar_baseline = ar.map(|(prefill_ms, ar)| {
        let ms = spread(&ar.ms);
        ArBaseline {
            floor_ms: floor(ar_bytes.total),
            ratio_to_floor: ms.median / floor(ar_bytes.total),
            tokens_per_second: 1e3 / ms.median,
            ms,
            prefill_ms,
            per_step: ar.stats,
            bytes: ar_bytes,
        }
    });
    let ar_tps = ar_baseline.as_ref().map(|a| a.tokens_per_second);
    let (params, active) = llada2::parameter_counts(&m.config);
    let profile = kernel_times
        .map(|runs| profile::summarize(&m.graph, &runs, &bytes.per_op, bandwidth.bytes_per_second));
    let r = Report {
        unmask_version: env!("CARGO_PKG_VERSION"),
        date: host::utc_date(),
        command: command_line(),
        host,
        model: ModelInfo {
            description: m.description.clone(),
            random_weights: m.random_weights,
            format: m.format.clone(),
            layers: m.config.num_hidden_layers,
            full_layers: m.full_layers,
            hidden_size: m.config.hidden_size,
            num_experts: m.config.num_experts,
            experts_per_token: m.config.num_experts_per_tok,
            vocab_size: m.config.vocab_size,
            parameters: params,
            active_parameters: active,
            weight_bytes: sizes.graph_total(&m.graph),
            build_seconds: m.build_seconds,
        },
        backend: BackendInfo {
            name: backend_name,
            load_seconds,
        },
        setup: Setup {
            prompt_len: p,
            window: b,
            warmup: args.warmup,
            iters: args.iters,
            prefill_ms,
        },
        forward: Forward {
            floor_ms: floor(bytes.total),
            ratio_to_floor: win.median / floor(bytes.total),
            ms: win,
            per_step: window.stats,
            allocations_after_warmup: window.max_allocations,
            bytes,
            routing,
        },
        ar_baseline,
        kv_cache: no_cache.map(|nc| {
            let nc = spread(&nc.ms);
            KvCache {
                prompt_len: p,
                with_cache_ms: win,
                without_cache_ms: nc,
                speedup: nc.median / win.median,
            }
        }),
        throughput: Throughput {
            assumed_tokens_per_forward: args.tokens_per_forward,
            tokens_per_second_assumed: tps_assumed,
            tokens_per_second_at_measured: tps_measured,
            ar_tokens_per_second: ar_tps,
            speedup_over_ar_assumed: ar_tps.map(|a| tps_assumed / a),
            speedup_over_ar_measured: tps_measured.zip(ar_tps).map(|(m, a)| m / a),
            measured: real,
            measured_by_decoder: real_runs,
        },
        profile,
        batch,
        bandwidth,
        memory,
    };
    let json = serde_json::to_string_pretty(&r)?;
    if let Some(path) = &args.output {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        report::print_table(&r);
    }
    Ok(())
}

/// Given, measured by the device, or measured with a host copy (the cpu backend's memory).
fn measure_bandwidth(args: &Args, backend: &mut dyn Backend) -> Result<Bandwidth> {
    if let Some(gb) = args.bandwidth {
        return Ok(Bandwidth {
            bytes_per_second: gb * 1e9,
            source: "given with --bandwidth".into(),
        });
    }
    if let Some(measured) = backend.measure_bandwidth() {
        let bps = measured.context("measuring the device's copy bandwidth")?;
        return Ok(Bandwidth {
            bytes_per_second: bps,
            source: "device-to-device copy, measured (read + write)".into(),
        });
    }
    let threads = unmask_core::reference::parallel::threads();
    Ok(bandwidth::host_copy(COPY_BYTES, 5, threads))
}

/// The expert choice of the timed window, from the reference backend on the host, when the
/// benchmarked backend does not tell it. Skipped (uniform estimate instead) when a second copy
/// of the weights would not fit in memory.
fn route_on_host(
    m: &BenchModel,
    toks: &workload::Tokens,
    sp: SampleParams,
) -> Result<(Option<Vec<Vec<u32>>>, String)> {
    let need = m
        .weights
        .iter()
        .map(|(_, t)| t.bytes().len() as u64)
        .sum::<u64>();
    if host::available_bytes().is_some_and(|a| need > a / 10 * 8) {
        return Ok((
            None,
            "expected under uniform routing (too large to route on the host here)".into(),
        ));
    }
    eprintln!("bench: routing the window on the host (reference backend) to count expert bytes");
    let mut r = ReferenceBackend::new(m.graph.clone(), &m.weights, &mut |_, _| {})?;
    let (p, b) = (toks.prompt.len(), toks.window.len());
    workload::prefill(&mut r, &toks.prompt, b, sp)?;
    let step = workload::repeatable_step(&toks.window, p, b, b, sp);
    let timed = workload::time_step(&mut r, &step, 0, 1)?;
    Ok((
        timed.routing,
        "the reference backend's routing of the same step, on the host".into(),
    ))
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut out = vec!["unmask".to_string()];
    out.extend(args.into_iter().skip(1).map(|a| {
        if a.contains(char::is_whitespace) {
            format!("{a:?}")
        } else {
            a
        }
    }));
    out.join(" ")
}

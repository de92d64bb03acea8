//! What `unmask bench` reports, as one serde struct (the `--json` output) and as a table.

use super::bandwidth::Bandwidth;
use super::host::Host;
use super::profile::Profile;
use super::realrun::RealRun;
use super::stats::Spread;
use super::traffic::Traffic;
use serde::Serialize;
use unmask_core::backend::StepStats;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub unmask_version: &'static str,
    /// UTC date of the run.
    pub date: String,
    /// The command line, to reproduce the run.
    pub command: String,
    pub host: Host,
    pub model: ModelInfo,
    pub backend: BackendInfo,
    pub setup: Setup,
    /// The diffusion window step: `window` tokens after `prompt_len` cached positions.
    pub forward: Forward,
    /// The same model decoding one token per forward (block length 1, causal); `null` when
    /// skipped (`--skip ar`), as are the other optional parts.
    pub ar_baseline: Option<ArBaseline>,
    pub kv_cache: Option<KvCache>,
    pub throughput: Throughput,
    pub bandwidth: Bandwidth,
    pub memory: Memory,
    /// Per-kernel times of the window step (`--profile`; `null` without it).
    pub profile: Option<Profile>,
    /// The window step of several sequences in one batched forward (`--batch`; `null`
    /// without it).
    pub batch: Option<Vec<super::batch::BatchRow>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub description: String,
    pub random_weights: bool,
    /// Stored precision of the matrices.
    pub format: String,
    pub layers: usize,
    pub full_layers: usize,
    pub hidden_size: usize,
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub vocab_size: usize,
    pub parameters: u64,
    pub active_parameters: u64,
    pub weight_bytes: u64,
    /// Time to load (a directory) or generate (random weights) the weights.
    pub build_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    pub name: String,
    /// Time to build the backend from the weights (upload, layout, pipelines).
    pub load_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub prompt_len: usize,
    pub window: usize,
    pub warmup: usize,
    pub iters: usize,
    /// One forward over the prompt that fills the cache (excluded from the window figures).
    pub prefill_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Forward {
    pub ms: Spread,
    /// The backend's counters for the last timed step.
    pub per_step: StepStats,
    /// The most buffer allocations any timed step made (all steps came after the warm-up).
    pub allocations_after_warmup: usize,
    pub bytes: Traffic,
    /// Where the expert choice behind `bytes.routed_expert_weights` comes from.
    pub routing: String,
    /// `bytes.total` at `bandwidth`.
    pub floor_ms: f64,
    /// Measured median over the floor (1 = at the memory roofline).
    pub ratio_to_floor: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArBaseline {
    pub ms: Spread,
    pub tokens_per_second: f64,
    pub prefill_ms: f64,
    pub per_step: StepStats,
    /// One token reads exactly `experts_per_token` experts per MoE layer.
    pub bytes: Traffic,
    pub floor_ms: f64,
    pub ratio_to_floor: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KvCache {
    pub prompt_len: usize,
    /// The window step over cached K/V (the same figures as `forward.ms`).
    pub with_cache_ms: Spread,
    /// The same window recomputing the whole prompt (start 0, `prompt_len + window` tokens).
    pub without_cache_ms: Spread,
    pub speedup: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub assumed_tokens_per_forward: f64,
    /// `assumed_tokens_per_forward` tokens per median window forward.
    pub tokens_per_second_assumed: f64,
    /// A real `generate()` run under the model's detected decoder.
    pub measured: Option<RealRun>,
    /// The same run under every decoder the model can use (tokens per forward of each).
    pub measured_by_decoder: Vec<RealRun>,
    /// The measured tokens per forward per median window forward.
    pub tokens_per_second_at_measured: Option<f64>,
    pub ar_tokens_per_second: Option<f64>,
    /// Diffusion tokens/s over AR tokens/s, at the assumed and at the measured tokens/forward.
    pub speedup_over_ar_assumed: Option<f64>,
    pub speedup_over_ar_measured: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Peak resident memory of the process (VmHWM), before the bandwidth measurement.
    pub peak_host_bytes: Option<u64>,
    /// Device memory the backend holds, where it can tell.
    pub device_bytes: Option<u64>,
}

/// Decimal units, as bandwidths are quoted.
pub fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

/// Parameter counts in B(illions) or M(illions).
pub fn count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else {
        format!("{:.2} M", n / 1e6)
    }
}

fn spread_row(label: &str, s: &Spread) -> String {
    format!(
        "  {label:<28}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>5}",
        s.median, s.min, s.p10, s.p90, s.max, s.n
    )
}

fn stats_line(s: &StepStats, allocations: usize) -> String {
    format!(
        "{} dispatches, {} submissions, {} uploaded, {} read back, {allocations} allocations",
        s.dispatches,
        s.submissions,
        bytes(s.bytes_uploaded as u64),
        bytes(s.bytes_read_back as u64)
    )
}

fn traffic_line(t: &Traffic) -> String {
    let mut parts = vec![
        ("lm_head", t.lm_head_weights),
        ("routed experts", t.routed_expert_weights),
        ("attention", t.attention_weights),
        ("dense FFN", t.dense_ffn_weights),
        ("shared experts", t.shared_expert_weights),
        ("router", t.router_weights),
        ("KV read", t.kv_cache_read),
        ("KV written", t.kv_cache_written),
        ("embedding rows", t.embedding_rows),
        ("norms", t.norm_weights),
    ];
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    parts
        .iter()
        .filter(|p| p.1 > 0)
        .map(|(n, b)| format!("{n} {}", bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn print_table(r: &Report) {
    let m = &r.model;
    println!("unmask bench, {} on {}", r.date, r.backend.name);
    println!(
        "host      {} ({} threads, {} RAM, load average {})",
        r.host.cpu.as_deref().unwrap_or("unknown cpu"),
        r.host.threads,
        r.host.memory_bytes.map_or("?".into(), bytes),
        r.host
            .load_average
            .map_or("?".into(), |l| format!("{l:.1}"))
    );
    println!(
        "model     {}: {} parameters, {} active, {} of weights; built in {:.1} s, backend loaded in {:.1} s",
        m.description,
        count(m.parameters),
        count(m.active_parameters),
        bytes(m.weight_bytes),
        m.build_seconds,
        r.backend.load_seconds
    );
    println!(
        "workload  window of {} after a {}-token prompt (prefill {:.1} ms, excluded); {} warm-up + {} timed forwards each",
        r.setup.window, r.setup.prompt_len, r.setup.prefill_ms, r.setup.warmup, r.setup.iters
    );
    println!();
    println!(
        "  {:<28}{:>10}{:>10}{:>10}{:>10}{:>10}{:>5}",
        "ms per forward", "median", "min", "p10", "p90", "max", "n"
    );
    println!(
        "{}",
        spread_row(
            &format!("diffusion, window {}", r.setup.window),
            &r.forward.ms
        )
    );
    if let Some(a) = &r.ar_baseline {
        println!("{}", spread_row("AR baseline, 1 token", &a.ms));
    }
    if let Some(k) = &r.kv_cache {
        let label = format!(
            "no KV cache, {} tokens",
            r.setup.prompt_len + r.setup.window
        );
        println!("{}", spread_row(&label, &k.without_cache_ms));
    }
    println!();
    let f = &r.forward;
    println!(
        "per step  {}",
        stats_line(&f.per_step, f.allocations_after_warmup)
    );
    println!(
        "touched   {} per window forward: {}",
        bytes(f.bytes.total),
        traffic_line(&f.bytes)
    );
    if !f.bytes.experts_touched.is_empty() {
        println!(
            "experts   {:.1} of {} per MoE layer ({})",
            f.bytes.mean_experts_touched(),
            f.bytes.num_experts,
            f.routing
        );
    }
    println!(
        "floor     {:.2} ms at {:.1} GB/s ({}); measured/floor {:.1}x",
        f.floor_ms,
        r.bandwidth.bytes_per_second / 1e9,
        r.bandwidth.source,
        f.ratio_to_floor
    );
    if let Some(a) = &r.ar_baseline {
        println!(
            "AR        {} per forward, floor {:.2} ms, measured/floor {:.1}x",
            bytes(a.bytes.total),
            a.floor_ms,
            a.ratio_to_floor
        );
    }
    if let Some(k) = &r.kv_cache {
        println!(
            "KV cache  {:.1} ms with, {:.1} ms without after {} tokens: {:.1}x",
            k.with_cache_ms.median, k.without_cache_ms.median, k.prompt_len, k.speedup
        );
    }
    println!();
    let t = &r.throughput;
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    println!(
        "tokens/s  diffusion {:.2} at {:.2} tokens/forward (assumed), {} at {} (measured); AR {}",
        t.tokens_per_second_assumed,
        t.assumed_tokens_per_forward,
        opt(t.tokens_per_second_at_measured),
        opt(t.measured.as_ref().map(|m| m.tokens_per_forward)),
        opt(t.ar_tokens_per_second)
    );
    println!(
        "          diffusion over AR: {}x assumed, {}x measured",
        opt(t.speedup_over_ar_assumed),
        opt(t.speedup_over_ar_measured)
    );
    for real in &t.measured_by_decoder {
        println!(
            "real run  {}: {} tokens in {} forwards ({:.2} tokens/forward), {:.0} ms ({:.2} tokens/s end to end), first token after {} ms; {}",
            real.decoder,
            real.tokens,
            real.forwards,
            real.tokens_per_forward,
            real.elapsed_ms,
            real.tokens_per_second,
            real.time_to_first_token_ms.map_or("-".into(), |v| format!("{v:.0}")),
            real.prompt_source
        );
    }
    if let Some(p) = &r.profile {
        super::profile::print(p, r.forward.ms.median);
        println!();
    }
    if let Some(rows) = &r.batch {
        println!();
        super::batch::print(rows, r.setup.window);
        println!();
    }
    println!(
        "memory    peak host {}, device {}",
        r.memory.peak_host_bytes.map_or("?".into(), bytes),
        r.memory
            .device_bytes
            .map_or("not reported by this backend".into(), bytes)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1_500), "1.5 kB");
        assert_eq!(bytes(644_000_000), "644.0 MB");
        assert_eq!(bytes(3_200_000_000), "3.20 GB");
        assert_eq!(count(1_510_000_000), "1.51 B");
        assert_eq!(count(690_000), "0.69 M");
    }
}

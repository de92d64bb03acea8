//! `unmask bench --batch N,...`: the window step of N sequences at once (each after its own
//! prompt, in its own KV-cache slot) as one batched forward, against N = 1. A batched forward
//! reads each dense weight and each touched expert once for all N windows, so the weight bytes
//! per generated token fall with N while each sequence's KV cache is still its own.

use super::source::BenchModel;
use super::stats::Spread;
use super::traffic::{forward_traffic, Routing, Traffic, WeightBytes};
use super::workload::{self, ms_since};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;
use unmask_core::backend::{Backend, Capture, SampleParams, SlotStep, Step};

/// One batch width's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub sequences: usize,
    /// Milliseconds per batched forward.
    pub ms: Spread,
    /// At the assumed tokens per forward: each request's rate, and all of them together.
    pub tokens_per_second_per_request: f64,
    pub tokens_per_second_total: f64,
    /// Weights (each touched expert once for the batch) and every sequence's KV cache.
    pub bytes_per_forward: u64,
    pub bytes_per_generated_token: f64,
    /// Distinct experts read per MoE layer for the whole batch.
    pub experts_touched: f64,
}

/// Times a window step of `n` sequences for each `n` of `widths`. `backend` needs as many
/// KV-cache slots as the widest.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    backend: &mut dyn Backend,
    m: &BenchModel,
    sizes: &WeightBytes,
    widths: &[usize],
    (prompt_len, window): (usize, usize),
    (warmup, iters): (usize, usize),
    tokens_per_forward: f64,
    seed: u64,
) -> Result<Vec<BatchRow>> {
    let widest = widths.iter().copied().max().unwrap_or(1);
    if widest > backend.slots() {
        bail!(
            "--batch {widest}: {} holds {} KV-cache slot(s); batched forwards run on the cpu, \
             reference, wgpu and cuda backends",
            backend.name(),
            backend.slots()
        );
    }
    let sp = SampleParams::greedy(m.ids.mask, m.ids.valid_vocab);
    // Each sequence its own prompt and window (its own routing).
    let toks: Vec<workload::Tokens> = (0..widest)
        .map(|i| workload::tokens(m, prompt_len, window, seed.wrapping_add(i as u64 + 1)))
        .collect::<Result<_>>()?;
    for (slot, t) in toks.iter().enumerate() {
        backend.reset_slot(slot);
        if !t.prompt.is_empty() {
            let step = Step {
                tokens: &t.prompt,
                start: 0,
                keep: t.prompt.len(),
                block_length: window,
                out_rows: 1,
                sampling: sp,
                capture: Capture::Samples,
            };
            backend.step_batch(&[SlotStep { slot, step }])?;
        }
    }
    let mut rows = Vec::new();
    for &n in widths {
        let steps: Vec<SlotStep> = toks[..n]
            .iter()
            .enumerate()
            .map(|(slot, t)| SlotStep {
                slot,
                step: workload::repeatable_step(&t.window, prompt_len, window, window, sp),
            })
            .collect();
        for _ in 0..warmup {
            backend.step_batch(&steps)?;
        }
        let mut ms = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            backend.step_batch(&steps)?;
            ms.push(ms_since(t));
        }
        let routing = backend.last_routing();
        let routing = match &routing {
            Some(r) => Routing::Known(r),
            None => Routing::Expected,
        };
        let bytes = batch_traffic(&m.graph, sizes, prompt_len, window, n, &routing);
        let ms = Spread::of(&ms).expect("at least one timed forward");
        let per_request = tokens_per_forward * 1e3 / ms.median;
        rows.push(BatchRow {
            sequences: n,
            tokens_per_second_per_request: per_request,
            tokens_per_second_total: per_request * n as f64,
            bytes_per_forward: bytes.total,
            bytes_per_generated_token: bytes.total as f64 / (n as f64 * tokens_per_forward),
            experts_touched: bytes.mean_experts_touched(),
            ms,
        });
    }
    Ok(rows)
}

/// Bytes of a forward over `n` windows of `window` tokens, each after `start` cached
/// positions of its own: the weights as for one run of `n * window` rows (`routing` over all
/// of them), the KV cache `n` times that of one window.
pub fn batch_traffic(
    graph: &unmask_core::graph::Graph,
    sizes: &WeightBytes,
    start: usize,
    window: usize,
    n: usize,
    routing: &Routing,
) -> Traffic {
    let mut t = forward_traffic(graph, sizes, start, n * window, routing);
    let one = forward_traffic(graph, sizes, start, window, &Routing::Expected);
    let kv = |x: u64| x * n as u64;
    t.total = t.total - t.kv_cache_read - t.kv_cache_written
        + kv(one.kv_cache_read)
        + kv(one.kv_cache_written);
    t.kv_cache_read = kv(one.kv_cache_read);
    t.kv_cache_written = kv(one.kv_cache_written);
    t.per_op.clear();
    t
}

pub fn print(rows: &[BatchRow], window: usize) {
    println!(
        "  {:<12}{:>12}{:>16}{:>14}{:>16}{:>16}{:>10}",
        "batch",
        "ms/forward",
        "tok/s/request",
        "tok/s total",
        "bytes/forward",
        "bytes/token",
        "experts"
    );
    for r in rows {
        println!(
            "  {:<12}{:>12.1}{:>16.2}{:>14.2}{:>16}{:>16}{:>10.1}",
            format!("{} x {window}", r.sequences),
            r.ms.median,
            r.tokens_per_second_per_request,
            r.tokens_per_second_total,
            super::report::bytes(r.bytes_per_forward),
            super::report::bytes(r.bytes_per_generated_token as u64),
            r.experts_touched
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::source::{synthetic, WeightFormat};
    use super::*;
    use unmask_core::ReferenceBackend;

    #[test]
    fn wider_batches_touch_fewer_bytes_per_token() {
        let m = synthetic("tiny", Some(2), WeightFormat::Bf16, 3).unwrap();
        let sizes = WeightBytes::of(&m.weights);
        let mut b = ReferenceBackend::new(m.graph.clone(), &m.weights, &mut |_, _| {})
            .unwrap()
            .with_slots(4);
        let rows = measure(&mut b, &m, &sizes, &[1, 4], (16, 8), (0, 1), 2.0, 0).unwrap();
        assert_eq!(rows.len(), 2);
        let (one, four) = (&rows[0], &rows[1]);
        assert_eq!((one.sequences, four.sequences), (1, 4));
        // Four times the KV, the dense weights once.
        assert!(four.bytes_per_forward > one.bytes_per_forward);
        assert!(four.bytes_per_forward < 4 * one.bytes_per_forward);
        assert!(four.bytes_per_generated_token < one.bytes_per_generated_token);
        assert!(four.experts_touched >= one.experts_touched);
        assert!(
            (four.tokens_per_second_total / four.tokens_per_second_per_request - 4.0).abs() < 1e-9
        );
        let mut single =
            ReferenceBackend::new(m.graph.clone(), &m.weights, &mut |_, _| {}).unwrap();
        let e = measure(&mut single, &m, &sizes, &[2], (16, 8), (0, 1), 2.0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("slot"), "{e}");
    }
}

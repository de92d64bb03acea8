//! `unmask bench --profile`: the timed window run again with every kernel timed by the backend
//! (`Backend::profile_step`), summed per op family and per kernel, next to the bytes each family
//! must move (the traffic model's per-op bytes) and the floor those bytes set.

use super::stats::Spread;
use serde::Serialize;
use std::collections::BTreeMap;
use unmask_core::backend::{Backend, KernelTime, Step};
use unmask_core::graph::{Graph, Op};
use unmask_core::profile::op_layers;

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Profiled steps; every figure is the median over them.
    pub runs: usize,
    /// Sum of the kernel times of a step (launch gaps and host work excluded).
    pub kernel_ms: f64,
    /// Kernels run per step.
    pub dispatches_per_step: usize,
    /// Kernels run per decoder layer, in layer order.
    pub dispatches_per_layer: Vec<usize>,
    /// The most kernels any MoE layer ran (`null` for a model without MoE layers).
    pub max_dispatches_per_moe_layer: Option<usize>,
    pub families: Vec<FamilyTime>,
    pub kernels: Vec<KernelRow>,
}

/// One op family (the kernel files of the GPU backends are split the same way).
#[derive(Debug, Clone, Serialize)]
pub struct FamilyTime {
    pub family: String,
    pub dispatches: usize,
    pub ms: f64,
    /// Of `kernel_ms`.
    pub share: f64,
    /// Weight and KV-cache bytes of the family's ops in this step.
    pub bytes: u64,
    pub gb_per_s: f64,
    /// `bytes` at the report's bandwidth.
    pub floor_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub dispatches: usize,
    pub ms: f64,
    pub share: f64,
}

/// Runs `step` `warmup + runs` times through `profile_step`; `None` where the backend cannot
/// time its kernels.
pub fn measure(
    backend: &mut dyn Backend,
    step: &Step,
    warmup: usize,
    runs: usize,
) -> Option<anyhow::Result<Vec<Vec<KernelTime>>>> {
    let mut all = Vec::with_capacity(runs);
    for i in 0..warmup + runs.max(1) {
        match backend.profile_step(step)? {
            Ok((_, times)) if i >= warmup => all.push(times),
            Ok(_) => {}
            Err(e) => return Some(Err(e.into())),
        }
    }
    Some(Ok(all))
}

/// The per-family and per-kernel medians of `runs`, with `per_op` bytes (graph order) at
/// `bytes_per_second`.
pub fn summarize(
    g: &Graph,
    runs: &[Vec<KernelTime>],
    per_op: &[u64],
    bytes_per_second: f64,
) -> Profile {
    let layers = op_layers(g);
    let family_of = |op: usize| {
        g.ops.get(op).map_or("other".to_string(), |o| {
            format!("{:?}", o.family()).to_lowercase()
        })
    };
    // Per run: seconds and dispatches by family and by kernel.
    let mut fam: BTreeMap<String, (Vec<f64>, usize)> = BTreeMap::new();
    let mut ker: BTreeMap<String, (Vec<f64>, usize)> = BTreeMap::new();
    let mut totals = Vec::with_capacity(runs.len());
    for (ri, run) in runs.iter().enumerate() {
        let mut f_run: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let mut k_run: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for t in run {
            let e = f_run.entry(family_of(t.op)).or_default();
            e.0 += t.seconds;
            e.1 += 1;
            let e = k_run.entry(t.kernel.clone()).or_default();
            e.0 += t.seconds;
            e.1 += 1;
        }
        totals.push(run.iter().map(|t| t.seconds).sum::<f64>());
        for (into, from) in [(&mut fam, f_run), (&mut ker, k_run)] {
            for (name, (s, n)) in from {
                let e = into
                    .entry(name)
                    .or_insert_with(|| (vec![0.0; runs.len()], 0));
                e.0[ri] = s;
                e.1 = n;
            }
        }
    }
    let kernel_ms = median(&totals) * 1e3;
    let share = |ms: f64| if kernel_ms > 0.0 { ms / kernel_ms } else { 0.0 };
    let mut family_bytes: BTreeMap<String, u64> = BTreeMap::new();
    for (i, b) in per_op.iter().enumerate() {
        *family_bytes.entry(family_of(i)).or_default() += b;
    }
    let mut families: Vec<FamilyTime> = fam
        .into_iter()
        .map(|(family, (secs, dispatches))| {
            let ms = median(&secs) * 1e3;
            let bytes = family_bytes.get(&family).copied().unwrap_or(0);
            FamilyTime {
                dispatches,
                share: share(ms),
                bytes,
                gb_per_s: if ms > 0.0 {
                    bytes as f64 / ms / 1e6
                } else {
                    0.0
                },
                floor_ms: bytes as f64 / bytes_per_second * 1e3,
                ms,
                family,
            }
        })
        .collect();
    families.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let mut kernels: Vec<KernelRow> = ker
        .into_iter()
        .map(|(kernel, (secs, dispatches))| {
            let ms = median(&secs) * 1e3;
            KernelRow {
                kernel,
                dispatches,
                ms,
                share: share(ms),
            }
        })
        .collect();
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let last = runs.last().map_or(&[][..], |r| r.as_slice());
    let mut dispatches_per_layer = vec![0usize; g.num_layers];
    for t in last {
        if let Some(Some(l)) = layers.get(t.op) {
            dispatches_per_layer[*l] += 1;
        }
    }
    let moe_layers: Vec<usize> = g
        .ops
        .iter()
        .zip(&layers)
        .filter_map(|(op, l)| matches!(op, Op::MoeExperts { .. }).then_some(*l).flatten())
        .collect();
    let max_dispatches_per_moe_layer = moe_layers.iter().map(|&l| dispatches_per_layer[l]).max();
    Profile {
        runs: runs.len(),
        kernel_ms,
        dispatches_per_step: last.len(),
        dispatches_per_layer,
        max_dispatches_per_moe_layer,
        families,
        kernels,
    }
}

fn median(v: &[f64]) -> f64 {
    Spread::of(v).map_or(0.0, |s| s.median)
}

/// The profile as the table's lines.
pub fn print(p: &Profile, step_median_ms: f64) {
    println!();
    println!(
        "profile   {:.2} ms of kernels per step (median of {} runs; the step took {:.2} ms), {} \
         kernels, {} at most in a MoE layer",
        p.kernel_ms,
        p.runs,
        step_median_ms,
        p.dispatches_per_step,
        p.max_dispatches_per_moe_layer
            .map_or("-".into(), |d| d.to_string())
    );
    println!(
        "  {:<14}{:>6}{:>11}{:>8}{:>12}{:>10}{:>11}",
        "family", "n", "ms", "share", "bytes", "GB/s", "floor ms"
    );
    for f in &p.families {
        println!(
            "  {:<14}{:>6}{:>11.3}{:>7.1}%{:>12}{:>10.3}{:>11.3}",
            f.family,
            f.dispatches,
            f.ms,
            f.share * 100.0,
            super::report::bytes(f.bytes),
            f.gb_per_s,
            f.floor_ms
        );
    }
    println!("  {:<30}{:>6}{:>11}{:>8}", "kernel", "n", "ms", "share");
    for k in &p.kernels {
        println!(
            "  {:<30}{:>6}{:>11.3}{:>7.1}%",
            k.kernel,
            k.dispatches,
            k.ms,
            k.share * 100.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unmask_core::backend::{Capture, SampleParams};
    use unmask_core::synthetic::{random_weights, shape_config};
    use unmask_core::weights::DType;

    #[test]
    fn families_and_kernels_add_up_and_take_the_median() {
        let c = shape_config("tiny").unwrap();
        let g = unmask_core::model::llada2::build(&c);
        // Two runs: every op 1 ms, then every op 3 ms (medians: 2 ms an op).
        let runs: Vec<Vec<KernelTime>> = [1e-3, 3e-3]
            .iter()
            .map(|&s| {
                (0..g.ops.len())
                    .map(|op| KernelTime {
                        op,
                        fused: Vec::new(),
                        kernel: g.ops[op].name().into(),
                        seconds: s,
                    })
                    .collect()
            })
            .collect();
        let per_op = vec![1_000_000u64; g.ops.len()];
        let p = summarize(&g, &runs, &per_op, 1e9);
        let n = g.ops.len();
        assert_eq!(p.dispatches_per_step, n);
        assert!(
            (p.kernel_ms - 2.0 * n as f64).abs() < 1e-9,
            "{}",
            p.kernel_ms
        );
        let ms: f64 = p.families.iter().map(|f| f.ms).sum();
        assert!((ms - p.kernel_ms).abs() < 1e-9);
        assert_eq!(p.families.iter().map(|f| f.dispatches).sum::<usize>(), n);
        assert_eq!(
            p.families.iter().map(|f| f.bytes).sum::<u64>(),
            n as u64 * 1_000_000
        );
        let mm = p.families.iter().find(|f| f.family == "matmul").unwrap();
        // 1 MB per op at 2 ms: 0.5 GB/s; at 1 GB/s the floor is 1 ms per op.
        assert!((mm.gb_per_s - 0.5).abs() < 1e-9, "{}", mm.gb_per_s);
        assert!((mm.floor_ms - mm.dispatches as f64).abs() < 1e-9);
        assert_eq!(p.kernels.iter().map(|k| k.dispatches).sum::<usize>(), n);
        // Layers: every op but the embedding and the head's four.
        assert_eq!(p.dispatches_per_layer.len(), c.num_hidden_layers);
        assert_eq!(p.dispatches_per_layer.iter().sum::<usize>(), n - 5);
        assert!(p.max_dispatches_per_moe_layer.is_some());
    }

    #[test]
    fn the_cpu_backend_profiles_every_op() {
        let c = shape_config("tiny").unwrap();
        let w = random_weights(&c, DType::BF16, 3).unwrap();
        let g = unmask_core::model::llada2::build(&c);
        let mut b = unmask_core::ReferenceBackend::new(g.clone(), &w, &mut |_, _| {}).unwrap();
        let tokens: Vec<u32> = (0..8).collect();
        let step = Step {
            tokens: &tokens,
            start: 0,
            keep: 0,
            block_length: 8,
            out_rows: 8,
            sampling: SampleParams::greedy(0, c.vocab_size as u32),
            capture: Capture::Samples,
        };
        let runs = measure(&mut b, &step, 1, 2).unwrap().unwrap();
        assert_eq!(runs.len(), 2);
        for run in &runs {
            let ops: Vec<usize> = run.iter().map(|t| t.op).collect();
            assert_eq!(ops, (0..g.ops.len()).collect::<Vec<_>>());
            assert!(run.iter().all(|t| t.seconds >= 0.0));
        }
        let p = summarize(&g, &runs, &vec![0; g.ops.len()], 1e9);
        assert!(p.kernel_ms > 0.0);
    }
}

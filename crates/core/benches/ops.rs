//! Criterion micro-benchmarks of the reference backend's hot ops at LLaDA2.0-mini sizes:
//! matmul (bf16, f32, q8_0 and q4, widened or dequantized in the kernel), the grouped expert FFN, attention over a
//! KV cache, routing and sampling. `cargo bench -p unmask-core --bench ops`; the figures
//! measured here are in docs/performance.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use unmask_core::backend::SampleParams;
use unmask_core::decode::sampler;
use unmask_core::graph::{BlockRouting, Heads, Routing};
use unmask_core::quant::quantize_tensor;
use unmask_core::reference::ops;
use unmask_core::reference::{Kernels, Matrix};
use unmask_core::synthetic::SplitMix;
use unmask_core::weights::{DType, Tensor};

// LLaDA2.0-mini (SPEC §1).
const HIDDEN: usize = 2048;
const HEADS: Heads = Heads {
    q: 16,
    kv: 4,
    dim: 128,
};
const MOE_INTER: usize = 512;
const VOCAB: usize = 157_184;
const WINDOW: usize = 32;

fn values(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut r = SplitMix(seed);
    (0..n).map(|_| r.normal(std)).collect()
}

/// A `[rows, cols]` weight in `dtype` (q8_0 / q4: the bf16 values quantized), as the
/// reference backend holds it.
fn matrix(rows: usize, cols: usize, dtype: DType, seed: u64) -> Matrix {
    if let Some(format) = dtype.quant() {
        let bf16 = tensor(rows, cols, DType::BF16, seed);
        let (packed, _) = quantize_tensor(format, &bf16).expect("a full-precision matrix");
        return Matrix::from_tensor(&packed);
    }
    Matrix::from_tensor(&tensor(rows, cols, dtype, seed))
}

fn tensor(rows: usize, cols: usize, dtype: DType, seed: u64) -> Tensor {
    let v = values(rows * cols, seed, 0.02);
    let bytes: Vec<u8> = match dtype {
        DType::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        DType::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        _ => bytemuck::cast_slice(&v).to_vec(),
    };
    Tensor::from_bytes(dtype, vec![rows, cols], bytes).expect("consistent shape")
}

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    // The fused QKV projection of one layer, for a window and for one AR token.
    let rows = (HEADS.q + 2 * HEADS.kv) * HEADS.dim;
    for dtype in [DType::BF16, DType::F32, DType::Q8_0, DType::Q4] {
        let w = matrix(rows, HIDDEN, dtype, 1);
        for n in [1, WINDOW] {
            let x = values(n * HIDDEN, 2, 1.0);
            let mut out = vec![0f32; n * rows];
            g.throughput(Throughput::Bytes(
                dtype.bytes_for_shape(&[rows, HIDDEN]) as u64
            ));
            g.bench_with_input(
                BenchmarkId::new(format!("qkv_{}", dtype.name()), n),
                &n,
                |b, _| b.iter(|| ops::matmul(black_box(&x), &w, &mut out)),
            );
            // The cpu backend's kernel (SIMD where present; the same loop otherwise).
            g.bench_with_input(
                BenchmarkId::new(format!("qkv_{}_fast", dtype.name()), n),
                &n,
                |b, _| b.iter(|| Kernels::Fast.matmul(black_box(&x), &w, &mut out)),
            );
            if matches!(dtype, DType::Q8_0 | DType::Q4) {
                // `--int8-dots`: the activations quantized per block, integer dot products.
                g.bench_with_input(
                    BenchmarkId::new(format!("qkv_{}_int8", dtype.name()), n),
                    &n,
                    |b, _| b.iter(|| Kernels::Int8.matmul(black_box(&x), &w, &mut out)),
                );
            }
        }
    }
    g.finish();
}

fn experts(c: &mut Criterion) {
    let mut g = c.benchmark_group("moe_experts");
    g.sample_size(10);
    // A window routed top-8 over 32 mini-width experts (a slice of the 256: the work per
    // touched expert is the same, and it keeps the benchmark's memory at 200 MB).
    let (count, top_k) = (32, 8);
    let gate: Vec<Matrix> = (0..count)
        .map(|e| matrix(MOE_INTER, HIDDEN, DType::BF16, 10 + e))
        .collect();
    let up: Vec<Matrix> = (0..count)
        .map(|e| matrix(MOE_INTER, HIDDEN, DType::BF16, 100 + e))
        .collect();
    let down: Vec<Matrix> = (0..count)
        .map(|e| matrix(HIDDEN, MOE_INTER, DType::BF16, 200 + e))
        .collect();
    let ex = ops::Experts {
        gate: gate.iter().collect(),
        up: up.iter().collect(),
        down: down.iter().collect(),
    };
    for n in [1, WINDOW] {
        let x = values(n * HIDDEN, 3, 1.0);
        let mut r = SplitMix(4);
        let mut ids = Vec::with_capacity(n * top_k);
        for _ in 0..n {
            let mut chosen: Vec<u32> = Vec::new();
            while chosen.len() < top_k {
                let e = (r.next_u64() % count) as u32;
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            ids.extend(chosen);
        }
        let weights = vec![0.3f32; n * top_k];
        let mut out = vec![0f32; n * HIDDEN];
        g.bench_with_input(BenchmarkId::new("top8_of_32", n), &n, |b, _| {
            b.iter(|| {
                ops::moe_experts(
                    Kernels::Reference,
                    black_box(&x),
                    &ids,
                    &weights,
                    top_k,
                    &ex,
                    &mut out,
                )
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    let width = (HEADS.q + 2 * HEADS.kv) * HEADS.dim;
    let kvw = HEADS.kv * HEADS.dim;
    for cached in [256, 1024] {
        let end = cached + WINDOW;
        let qkv = values(WINDOW * width, 5, 1.0);
        let k = values(end * kvw, 6, 1.0);
        let v = values(end * kvw, 7, 1.0);
        let mut out = vec![0f32; WINDOW * HEADS.q * HEADS.dim];
        g.bench_with_input(
            BenchmarkId::new("window32_mini_heads", cached),
            &cached,
            |b, _| {
                b.iter(|| ops::attention(black_box(&qkv), HEADS, &k, &v, cached, WINDOW, &mut out))
            },
        );
        // The cpu backend's SIMD attention (bit for bit the same).
        g.bench_with_input(
            BenchmarkId::new("window32_mini_heads_fast", cached),
            &cached,
            |b, _| {
                b.iter(|| {
                    Kernels::Fast.attention(
                        black_box(&qkv),
                        HEADS,
                        &k,
                        &v,
                        cached,
                        WINDOW,
                        &mut out,
                    )
                })
            },
        );
    }
    g.finish();
}

fn routing(c: &mut Criterion) {
    let r = Routing {
        num_experts: 256,
        top_k: 8,
        n_group: 8,
        topk_group: 4,
        scaling: 2.5,
        block: None,
    };
    let logits = values(256, 8, 1.0);
    let bias = values(256, 9, 0.05);
    c.bench_function("route_256_experts_one_token", |b| {
        b.iter(|| ops::route(black_box(&logits), Some(&bias), &r))
    });
    // LLaDA2.2: one 32-token routing block, capacity 48 of 256 experts.
    let block = BlockRouting {
        size: 32,
        capacity: 48,
    };
    let rb = Routing {
        block: Some(block),
        ..r
    };
    let window = values(256 * 32, 10, 1.0);
    c.bench_function("route_blocks_256_experts_32_tokens", |b| {
        b.iter(|| ops::route_blocks(black_box(&window), Some(&bias), &rb, block, 0))
    });
}

fn sampling(c: &mut Criterion) {
    let mut g = c.benchmark_group("sample_row");
    g.sample_size(20);
    let logits = values(VOCAB, 11, 3.0);
    let greedy = SampleParams::greedy(156_895, 157_153);
    g.bench_function("greedy_157184", |b| {
        b.iter(|| sampler::sample_row(black_box(&logits), &greedy, 7))
    });
    let seeded = SampleParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: 1,
        ..greedy
    };
    g.bench_function("seeded_t0.8_p0.95_157184", |b| {
        b.iter(|| sampler::sample_row(black_box(&logits), &seeded, 7))
    });
    g.finish();
}

criterion_group!(benches, matmul, experts, attention, routing, sampling);
criterion_main!(benches);

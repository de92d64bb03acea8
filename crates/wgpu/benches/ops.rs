//! Criterion benchmarks of the WGSL kernels at LLaDA2.0-mini sizes, through `WgpuBackend`: each
//! one times a step of a small graph whose first op embeds rows (the only way data enters a
//! graph) followed by the op under test, so every figure includes a step's fixed cost (ids
//! upload, one submission, the samples readback). `step_overhead` is that cost alone.
//! `cargo bench -p unmask-wgpu --bench ops`; without an adapter it prints `wgpu: SKIPPED`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use unmask_core::backend::{Backend, Capture, SampleParams, Step};
use unmask_core::graph::{
    BufId, Elem, ExpertSet, Graph, GraphBuilder, Heads, Op, Routing, Rows, WeightId, WeightRole,
};
use unmask_core::quant::quantize_tensor;
use unmask_core::synthetic::SplitMix;
use unmask_core::weights::{DType, Tensor, WeightStore};
use unmask_wgpu::{WgpuBackend, WgpuOptions};

const HIDDEN: usize = 2048;
const HEADS: Heads = Heads {
    q: 16,
    kv: 4,
    dim: 128,
};
const MOE_INTER: usize = 512;
const VOCAB: usize = 157_184;
const WINDOW: usize = 32;
/// Rows of every embedding table: the op's input, gathered by token id.
const TABLE_ROWS: usize = 64;

/// A one-op graph under construction, with its weights.
struct Bench {
    g: GraphBuilder,
    store: WeightStore,
    ids: BufId,
    rng: SplitMix,
    layers: usize,
}

impl Bench {
    fn new() -> Self {
        let mut g = GraphBuilder::default();
        let ids = g.buffer("input_ids", Rows::Tokens, 1, Elem::U32);
        Bench {
            g,
            store: WeightStore::default(),
            ids,
            rng: SplitMix(1),
            layers: 0,
        }
    }

    /// A `[rows, cols]` weight of N(0, 0.02) values in `dtype` (q8_0 / q4: bf16 quantized).
    fn weight(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        dtype: DType,
        role: WeightRole,
    ) -> WeightId {
        let stored = if dtype.quant().is_some() {
            DType::BF16
        } else {
            dtype
        };
        let mut bytes = Vec::with_capacity(stored.bytes_for(rows * cols));
        for _ in 0..rows * cols {
            let v = self.rng.normal(0.02);
            match stored {
                DType::F32 => bytes.extend_from_slice(&v.to_le_bytes()),
                _ => bytes.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
            }
        }
        let mut t = Tensor::from_bytes(stored, vec![rows, cols], bytes).expect("shape");
        if let Some(f) = dtype.quant() {
            t = quantize_tensor(f, &t).expect("full precision").0;
        }
        self.store.insert(name, t);
        self.g.weight(name, vec![rows, cols], role)
    }

    /// `x = table[ids]` for a `[TABLE_ROWS, cols]` table.
    fn embed(&mut self, cols: usize, dtype: DType) -> BufId {
        let table = self.weight("table", TABLE_ROWS, cols, dtype, WeightRole::Embedding);
        let out = self.g.f32("x", Rows::Tokens, cols);
        self.g.op(Op::Embed {
            ids: self.ids,
            table,
            out,
        });
        out
    }

    fn backend(mut self, sample: Option<(BufId, BufId)>) -> WgpuBackend {
        let (logits, samples) = sample.unwrap_or_else(|| {
            (
                self.g.f32("unused_logits", Rows::Out, 1),
                self.g.buffer("unused_samples", Rows::Out, 2, Elem::U32),
            )
        });
        let graph = Graph {
            buffers: self.g.buffers,
            weights: self.g.weights,
            ops: self.g.ops,
            input_ids: self.ids,
            logits,
            samples,
            hidden: Vec::new(),
            num_layers: self.layers,
        };
        WgpuBackend::new(graph, &self.store, &WgpuOptions::default(), &mut |_, _| {})
            .expect("the benchmark graph loads")
    }
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| (i * 7 % TABLE_ROWS) as u32).collect()
}

fn step<'a>(tokens: &'a [u32], start: usize, keep: usize, out_rows: usize) -> Step<'a> {
    Step {
        tokens,
        start,
        keep,
        block_length: WINDOW,
        out_rows,
        sampling: SampleParams::greedy(u32::MAX, u32::MAX),
        capture: Capture::Samples,
    }
}

/// Times repeated steps over `n` tokens at `start` (the cache must hold `start` positions).
fn time_steps(
    c: &mut Criterion,
    group: &str,
    id: BenchmarkId,
    b: &mut WgpuBackend,
    n: usize,
    start: usize,
) {
    let t = tokens(n);
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(id, |bench| {
        bench.iter(|| b.step(&step(&t, start, 0, 1)).expect("step"))
    });
    g.finish();
}

fn step_overhead(c: &mut Criterion) {
    let mut s = Bench::new();
    s.embed(HIDDEN, DType::F32);
    let mut b = s.backend(None);
    time_steps(
        c,
        "step_overhead",
        BenchmarkId::new("embed_only", WINDOW),
        &mut b,
        WINDOW,
        0,
    );
}

fn matmul(c: &mut Criterion) {
    let rows = (HEADS.q + 2 * HEADS.kv) * HEADS.dim;
    for dtype in [DType::BF16, DType::Q8_0, DType::Q4] {
        let mut s = Bench::new();
        let x = s.embed(HIDDEN, DType::F32);
        let weight = s.weight("qkv", rows, HIDDEN, dtype, WeightRole::Matrix);
        let out = s.g.f32("qkv_out", Rows::Tokens, rows);
        s.g.op(Op::MatMul { x, weight, out });
        let mut b = s.backend(None);
        for n in [1, WINDOW] {
            let id = BenchmarkId::new(format!("qkv_{}", dtype.name()), n);
            time_steps(c, "matmul", id, &mut b, n, 0);
        }
    }
}

fn experts(c: &mut Criterion) {
    // A window routed top-8 over 32 mini-width experts, as in the cpu benchmark.
    let (count, top_k) = (32, 8);
    let mut s = Bench::new();
    let x = s.embed(HIDDEN, DType::F32);
    let router = s.weight("router", count, HIDDEN, DType::F32, WeightRole::Router);
    let logits = s.g.f32("router_logits", Rows::Tokens, count);
    s.g.op(Op::MatMul {
        x,
        weight: router,
        out: logits,
    });
    let ids = s.g.buffer("expert_ids", Rows::Tokens, top_k, Elem::U32);
    let weights = s.g.f32("expert_weights", Rows::Tokens, top_k);
    s.g.op(Op::MoeRoute {
        logits,
        bias: None,
        routing: Routing {
            num_experts: count,
            top_k,
            n_group: 4,
            topk_group: 2,
            scaling: 2.5,
            block: None,
        },
        ids,
        weights,
    });
    let mut set = ExpertSet {
        gate: vec![],
        up: vec![],
        down: vec![],
    };
    for e in 0..count {
        set.gate.push(s.weight(
            &format!("e{e}.gate"),
            MOE_INTER,
            HIDDEN,
            DType::BF16,
            WeightRole::Matrix,
        ));
        set.up.push(s.weight(
            &format!("e{e}.up"),
            MOE_INTER,
            HIDDEN,
            DType::BF16,
            WeightRole::Matrix,
        ));
        set.down.push(s.weight(
            &format!("e{e}.down"),
            HIDDEN,
            MOE_INTER,
            DType::BF16,
            WeightRole::Matrix,
        ));
    }
    let out = s.g.f32("moe_out", Rows::Tokens, HIDDEN);
    s.g.op(Op::MoeExperts {
        x,
        ids,
        weights,
        experts: set,
        out,
    });
    let mut b = s.backend(None);
    for n in [1, WINDOW] {
        let id = BenchmarkId::new("route_and_top8_of_32", n);
        time_steps(c, "moe_experts", id, &mut b, n, 0);
    }
}

fn attention(c: &mut Criterion) {
    let width = (HEADS.q + 2 * HEADS.kv) * HEADS.dim;
    for cached in [256, 1024] {
        let mut s = Bench::new();
        let qkv = s.embed(width, DType::F32);
        let out = s.g.f32("attn", Rows::Tokens, HEADS.q * HEADS.dim);
        s.g.op(Op::Attention {
            qkv,
            layer: 0,
            heads: HEADS,
            out,
        });
        s.layers = 1;
        let mut b = s.backend(None);
        // Fill the cache once; each timed step then reads it and keeps nothing new.
        let prompt = tokens(cached);
        b.step(&step(&prompt, 0, cached, 1)).expect("prefill");
        let id = BenchmarkId::new("window32_mini_heads", cached);
        time_steps(c, "attention", id, &mut b, WINDOW, cached);
    }
}

fn sampling(c: &mut Criterion) {
    // Logits rows come straight from an f32 table of the real vocabulary's width.
    let mut s = Bench::new();
    let x = s.embed(VOCAB, DType::F32);
    let logits = s.g.f32("logits", Rows::Out, VOCAB);
    s.g.op(Op::TakeLastRows { x, out: logits });
    let samples = s.g.buffer("samples", Rows::Out, 2, Elem::U32);
    s.g.op(Op::Sample {
        logits,
        out: samples,
    });
    let mut b = s.backend(Some((logits, samples)));
    let t = tokens(WINDOW);
    let mut g = c.benchmark_group("sample");
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("greedy_157184", WINDOW), |bench| {
        bench.iter(|| b.step(&step(&t, 0, 0, WINDOW)).expect("step"))
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    if let Err(e) = unmask_wgpu::probe(None) {
        eprintln!("wgpu: SKIPPED ({e})");
        return;
    }
    step_overhead(c);
    matmul(c);
    experts(c);
    attention(c);
    sampling(c);
}

criterion_group!(benches, all);
criterion_main!(benches);

//! Every WGSL op against `unmask_core::reference::ops` (the oracle) on random shapes, including
//! sizes that are not multiples of the workgroup or tile sizes. Each test builds a small graph
//! whose first op embeds random rows (the only way data enters a graph), runs it on the wgpu
//! backend, and reads the outputs back as captured hidden states.
//!
//! Without an adapter the tests print `wgpu: SKIPPED (...)` and pass, unless
//! `UNMASK_REQUIRE_WGPU` is set (CI), which makes a missing adapter a failure.

use unmask_core::backend::{Backend, Capture, SampleParams, Step, SAMPLE_WORDS};
use unmask_core::decode::sampler;
use unmask_core::graph::{
    BlockRouting, BufId, Elem, ExpertSet, Graph, GraphBuilder, Heads, Op, Routing, Rows, WeightId,
    WeightRole,
};
use unmask_core::reference::{ops, Matrix};
use unmask_core::synthetic::SplitMix;
use unmask_core::weights::{DType, Tensor, WeightStore};
use unmask_wgsl::{WgpuBackend, WgpuOptions};

fn adapter_or_skip() -> bool {
    unmask_wgsl::probe_or_skip().is_some()
}

fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()),
            other => panic!("{other:?}"),
        }
    }
    out
}

/// A graph under construction with its weights.
struct TestGraph {
    g: GraphBuilder,
    store: WeightStore,
    ids: BufId,
    rng: SplitMix,
    layers: usize,
}

impl TestGraph {
    fn new(seed: u64) -> Self {
        let mut g = GraphBuilder::default();
        let ids = g.buffer("input_ids", Rows::Tokens, 1, Elem::U32);
        TestGraph {
            g,
            store: WeightStore::default(),
            ids,
            rng: SplitMix(seed),
            layers: 0,
        }
    }

    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.rng.symmetric()).collect()
    }

    /// A weight in `dtype`; returns its id and its values as the device will see them.
    fn weight(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        dtype: DType,
        values: Vec<f32>,
        role: WeightRole,
    ) -> (WeightId, Tensor) {
        let t = Tensor::from_bytes(dtype, shape.clone(), encode(dtype, &values)).unwrap();
        self.store.insert(name, t.clone());
        (self.g.weight(name, shape, role), t)
    }

    /// `x = table[ids]` for a random `[rows, cols]` table: returns x's buffer and the table.
    fn embed(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        dtype: DType,
        scale: f32,
    ) -> (BufId, Tensor) {
        let v = self.values(rows * cols, scale);
        let (w, t) = self.weight(name, vec![rows, cols], dtype, v, WeightRole::Embedding);
        let out = self.g.f32(format!("{name}.x"), Rows::Tokens, cols);
        self.g.op(Op::Embed {
            ids: self.ids,
            table: w,
            out,
        });
        (out, t)
    }

    fn finish(
        mut self,
        capture: Vec<BufId>,
        sample: Option<(BufId, BufId)>,
    ) -> (Graph, WeightStore) {
        let (logits, samples) = sample.unwrap_or_else(|| {
            (
                self.g.f32("unused_logits", Rows::Out, 1),
                self.g
                    .buffer("unused_samples", Rows::Out, SAMPLE_WORDS, Elem::U32),
            )
        });
        let graph = Graph {
            buffers: self.g.buffers,
            weights: self.g.weights,
            ops: self.g.ops,
            input_ids: self.ids,
            logits,
            samples,
            hidden: capture,
            num_layers: self.layers,
        };
        (graph, self.store)
    }
}

fn backend(graph: Graph, store: &WeightStore, options: WgpuOptions) -> WgpuBackend {
    WgpuBackend::new(graph, store, &options, &mut |_, _| {}).unwrap()
}

/// Runs one step over `tokens` at `start` and returns the captured outputs.
fn run(
    b: &mut WgpuBackend,
    tokens: &[u32],
    start: usize,
    out_rows: usize,
    block: usize,
) -> Vec<Vec<f32>> {
    b.step(&Step {
        tokens,
        start,
        keep: tokens.len(),
        block_length: block,
        out_rows,
        sampling: SampleParams::greedy(u32::MAX, u32::MAX),
        capture: Capture::Hidden,
    })
    .unwrap()
    .hidden
}

fn rows_of(t: &Tensor, ids: &[u32]) -> Vec<f32> {
    let m = Matrix::from_tensor(t);
    let mut out = vec![0f32; ids.len() * m.cols];
    for (i, &id) in ids.iter().enumerate() {
        m.row_into(id as usize, &mut out[i * m.cols..(i + 1) * m.cols]);
    }
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0f32),
            |best, (i, e)| if e > best.1 { (i, e) } else { best },
        );
    assert!(
        err <= tol * scale,
        "{what}: max abs error {err} at {i} (got {}, want {}, scale {scale})",
        got[i],
        want[i]
    );
}

fn ids(rng: &mut SplitMix, n: usize, rows: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.next_u64() % rows as u64) as u32)
        .collect()
}

#[test]
fn embed_and_matmul_match_the_reference_in_every_format_and_split() {
    if !adapter_or_skip() {
        return;
    }
    // (tokens, in, out, weight dtype, weight binding limit): odd sizes, more rows than a tile,
    // and bindings small enough to split both the table and the matrix into several parts.
    let cases = [
        (1, 37, 45, DType::F32, None),
        (5, 64, 100, DType::BF16, Some(4096)),
        (33, 129, 70, DType::F16, None),
        (70, 96, 257, DType::BF16, Some(10_000)),
    ];
    for (ci, &(n, k, m, dtype, limit)) in cases.iter().enumerate() {
        let mut tg = TestGraph::new(ci as u64 + 1);
        let table_rows = 2 * n + 3;
        let (x, table) = tg.embed("table", table_rows, k, dtype, 1.0);
        let wv = tg.values(m * k, 1.0);
        let (w, wt) = tg.weight("w", vec![m, k], dtype, wv, WeightRole::Matrix);
        let out = tg.g.f32("out", Rows::Tokens, m);
        tg.g.op(Op::MatMul { x, weight: w, out });
        let token_ids = ids(&mut tg.rng, n, table_rows);
        let (graph, store) = tg.finish(vec![x, out], None);
        let mut b = backend(
            graph,
            &store,
            WgpuOptions {
                weight_binding_limit: limit,
                ..Default::default()
            },
        );
        let got = run(&mut b, &token_ids, 0, n, 32);
        let want_x = rows_of(&table, &token_ids);
        assert_eq!(
            got[0], want_x,
            "case {ci}: embedding rows are copied exactly"
        );
        let mut want = vec![0f32; n * m];
        ops::matmul(&want_x, &Matrix::from_tensor(&wt), &mut want);
        assert_close(&format!("case {ci}: matmul"), &got[1], &want, 1e-5);
    }
}

#[test]
fn norm_add_swiglu_and_take_last_rows_match_the_reference() {
    if !adapter_or_skip() {
        return;
    }
    let (n, d, groups) = (7, 50, 3);
    let mut tg = TestGraph::new(11);
    let (a, ta) = tg.embed("a", 9, d * groups, DType::F32, 2.0);
    let (bx, tb) = tg.embed("b", 9, d * groups, DType::F32, 2.0);
    let nv: Vec<f32> = (0..d).map(|i| 1.0 + 0.01 * i as f32).collect();
    let (nw, _) = tg.weight("norm", vec![d], DType::BF16, nv, WeightRole::Vector);
    let normed = tg.g.f32("normed", Rows::Tokens, d * groups);
    tg.g.op(Op::RmsNorm {
        x: a,
        weight: nw,
        out: normed,
        eps: 1e-6,
    });
    let sum = tg.g.f32("sum", Rows::Tokens, d * groups);
    tg.g.op(Op::Add { a, b: bx, out: sum });
    let act = tg.g.f32("act", Rows::Tokens, d * groups);
    tg.g.op(Op::SwiGlu {
        gate: a,
        up: bx,
        out: act,
    });
    let tail = tg.g.f32("tail", Rows::Out, d * groups);
    tg.g.op(Op::TakeLastRows { x: sum, out: tail });
    let token_ids = ids(&mut tg.rng, n, 9);
    let norm_w: Vec<f32> = Matrix::from_tensor(tg.store.get("norm").unwrap()).to_vec();
    let (graph, store) = tg.finish(vec![normed, sum, act, tail], None);
    let mut b = backend(graph, &store, WgpuOptions::default());
    let out_rows = 3;
    let got = run(&mut b, &token_ids, 0, out_rows, 32);
    let (xa, xb) = (rows_of(&ta, &token_ids), rows_of(&tb, &token_ids));
    let mut want = vec![0f32; xa.len()];
    ops::rms_norm(&xa, &norm_w, 1e-6, &mut want);
    assert_close("rms_norm", &got[0], &want, 1e-6);
    let want_sum: Vec<f32> = xa.iter().zip(&xb).map(|(x, y)| x + y).collect();
    assert_eq!(got[1], want_sum, "add is exact");
    ops::swiglu(&xa, &xb, &mut want);
    assert_close("swiglu", &got[2], &want, 1e-6);
    let w = d * groups;
    assert_eq!(got[3], want_sum[(n - out_rows) * w..], "take_last_rows");
}

/// The reference attention of one step: norms and rope on `qkv` rows at `start`, the step's K/V
/// appended to the caches, block-causal attention.
#[allow(clippy::too_many_arguments)]
fn reference_attention(
    qkv: &mut [f32],
    heads: Heads,
    norms: (&[f32], &[f32]),
    inv_freq: &[f32],
    start: usize,
    block: usize,
    k_cache: &mut Vec<f32>,
    v_cache: &mut Vec<f32>,
) -> Vec<f32> {
    let d = heads.dim;
    let width = (heads.q + 2 * heads.kv) * d;
    let kvw = heads.kv * d;
    ops::qk_norm_rope(
        qkv,
        heads,
        Some(norms.0),
        Some(norms.1),
        1e-6,
        inv_freq,
        start,
    );
    k_cache.truncate(start * kvw);
    v_cache.truncate(start * kvw);
    for row in qkv.chunks_exact(width) {
        k_cache.extend_from_slice(&row[heads.q * d..heads.q * d + kvw]);
        v_cache.extend_from_slice(&row[heads.q * d + kvw..]);
    }
    let n = qkv.len() / width;
    let mut out = vec![0f32; n * heads.q * d];
    ops::attention(qkv, heads, k_cache, v_cache, start, block, &mut out);
    out
}

#[test]
fn qk_norm_rope_and_attention_over_the_cache_match_the_reference() {
    if !adapter_or_skip() {
        return;
    }
    let heads = Heads {
        q: 4,
        kv: 2,
        dim: 40,
    };
    let (rot_dim, theta, block) = (20, 10_000.0f32, 5);
    let width = (heads.q + 2 * heads.kv) * heads.dim;
    let mut tg = TestGraph::new(21);
    tg.layers = 1;
    let table_rows = 50;
    let (qkv, table) = tg.embed("qkv", table_rows, width, DType::F32, 1.0);
    let qn: Vec<f32> = (0..heads.dim).map(|i| 0.9 + 0.005 * i as f32).collect();
    let kn: Vec<f32> = (0..heads.dim).map(|i| 1.1 - 0.004 * i as f32).collect();
    let (qw, _) = tg.weight(
        "q_norm",
        vec![heads.dim],
        DType::F32,
        qn.clone(),
        WeightRole::Vector,
    );
    let (kw, _) = tg.weight(
        "k_norm",
        vec![heads.dim],
        DType::F32,
        kn.clone(),
        WeightRole::Vector,
    );
    tg.g.op(Op::QkNormRope {
        qkv,
        q_norm: Some(qw),
        k_norm: Some(kw),
        heads,
        rot_dim,
        theta,
        eps: 1e-6,
    });
    let out = tg.g.f32("attn", Rows::Tokens, heads.q * heads.dim);
    tg.g.op(Op::Attention {
        qkv,
        layer: 0,
        heads,
        out,
    });
    let (graph, store) = tg.finish(vec![qkv, out], None);
    // Small chunks: the first step (300 tokens) runs as several chunks and grows the cache past
    // its first allocation.
    let mut b = backend(
        graph,
        &store,
        WgpuOptions {
            max_tokens: 64,
            ..Default::default()
        },
    );
    let inv_freq = ops::rope_inv_freq(rot_dim, theta);
    let (mut kc, mut vc) = (Vec::new(), Vec::new());
    let mut rng = SplitMix(5);
    // (start, tokens): a long first step, a short one after it, then one that rewinds into
    // the cache (start below what is cached) as the decoder does for a window.
    for (start, n) in [(0usize, 300usize), (300, 9), (305, 13)] {
        let token_ids = ids(&mut rng, n, table_rows);
        let got = run(&mut b, &token_ids, start, n, block);
        let mut want_qkv = rows_of(&table, &token_ids);
        let want = reference_attention(
            &mut want_qkv,
            heads,
            (&qn, &kn),
            &inv_freq,
            start,
            block,
            &mut kc,
            &mut vc,
        );
        assert_close(
            &format!("qk_norm_rope at {start}"),
            &got[0],
            &want_qkv,
            1e-5,
        );
        assert_close(&format!("attention at {start}"), &got[1], &want, 1e-5);
    }
}

#[test]
fn moe_routing_and_grouped_experts_match_the_reference() {
    if !adapter_or_skip() {
        return;
    }
    // Group-limited top-k (2.0/2.1), then LLaDA2.2's block routing (the 70-token case ends on
    // a partial routing block).
    for block in [
        None,
        Some(BlockRouting {
            size: 32,
            capacity: 6,
        }),
    ] {
        check_moe(Routing {
            num_experts: 16,
            top_k: 4,
            n_group: 4,
            topk_group: 2,
            scaling: 2.5,
            block,
        });
    }
}

fn check_moe(routing: Routing) {
    let (h, inter, e) = (40, 24, routing.num_experts);
    for (case, (n, limit)) in [(37usize, None), (70, Some(4000u64))]
        .into_iter()
        .enumerate()
    {
        let mut tg = TestGraph::new(31 + case as u64);
        let rows = 90;
        let (x, xt) = tg.embed("x", rows, h, DType::F32, 1.0);
        let (logits, lt) = tg.embed("router_logits", rows, e, DType::F32, 2.0);
        // Expert 3 is favoured by its bias, so that it gets more rows than one tile holds.
        let mut bias: Vec<f32> = tg.values(e, 0.05);
        bias[3] = 3.0;
        let (bw, _) = tg.weight(
            "bias",
            vec![e],
            DType::F32,
            bias.clone(),
            WeightRole::Vector,
        );
        let idb = tg.g.buffer("ids", Rows::Tokens, routing.top_k, Elem::U32);
        let wb = tg.g.f32("weights", Rows::Tokens, routing.top_k);
        tg.g.op(Op::MoeRoute {
            logits,
            bias: Some(bw),
            routing,
            ids: idb,
            weights: wb,
        });
        let mut set = ExpertSet {
            gate: vec![],
            up: vec![],
            down: vec![],
        };
        let mut mats = Vec::new();
        for j in 0..e {
            let (gv, uv, dv) = (
                tg.values(inter * h, 0.3),
                tg.values(inter * h, 0.3),
                tg.values(h * inter, 0.3),
            );
            let (g, gt) = tg.weight(
                &format!("e{j}.gate"),
                vec![inter, h],
                DType::BF16,
                gv,
                WeightRole::Matrix,
            );
            let (u, ut) = tg.weight(
                &format!("e{j}.up"),
                vec![inter, h],
                DType::BF16,
                uv,
                WeightRole::Matrix,
            );
            let (d, dt) = tg.weight(
                &format!("e{j}.down"),
                vec![h, inter],
                DType::BF16,
                dv,
                WeightRole::Matrix,
            );
            set.gate.push(g);
            set.up.push(u);
            set.down.push(d);
            mats.push((
                Matrix::from_tensor(&gt),
                Matrix::from_tensor(&ut),
                Matrix::from_tensor(&dt),
            ));
        }
        let out = tg.g.f32("moe", Rows::Tokens, h);
        tg.g.op(Op::MoeExperts {
            x,
            ids: idb,
            weights: wb,
            experts: set,
            out,
        });
        let token_ids = ids(&mut tg.rng, n, rows);
        let (graph, store) = tg.finish(vec![idb, wb, out], None);
        let mut b = backend(
            graph,
            &store,
            WgpuOptions {
                weight_binding_limit: limit,
                ..Default::default()
            },
        );
        let got = run(&mut b, &token_ids, 0, n, 32);
        let (xs, ls) = (rows_of(&xt, &token_ids), rows_of(&lt, &token_ids));
        let mut want_ids = Vec::new();
        let mut want_w = Vec::new();
        let routed = match routing.block {
            None => ls
                .chunks_exact(e)
                .map(|row| ops::route(row, Some(&bias), &routing))
                .collect(),
            Some(b) => ops::route_blocks(&ls, Some(&bias), &routing, b, 0).unwrap(),
        };
        for (i, w) in routed {
            want_ids.extend(i);
            want_w.extend(w);
        }
        let got_ids: Vec<u32> = got[0].iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            got_ids, want_ids,
            "case {case}: {:?}: routed experts",
            routing.block
        );
        assert!(
            want_ids.iter().filter(|&&i| i == 3).count() > 32,
            "the test should give one expert several tiles"
        );
        assert_close(
            &format!("case {case}: routing weights"),
            &got[1],
            &want_w,
            1e-6,
        );
        let ex = ops::Experts {
            gate: mats.iter().map(|m| &m.0).collect(),
            up: mats.iter().map(|m| &m.1).collect(),
            down: mats.iter().map(|m| &m.2).collect(),
        };
        let mut want = vec![0f32; n * h];
        ops::moe_experts(&xs, &want_ids, &want_w, routing.top_k, &ex, &mut want);
        assert_close(&format!("case {case}: experts"), &got[2], &want, 1e-5);
        let stats = b.last_stats();
        assert_eq!(stats.submissions, 1);
    }
}

#[test]
fn greedy_and_seeded_sampling_reproduce_the_host_sampler() {
    if !adapter_or_skip() {
        return;
    }
    let vocab = 3001;
    let (n, out_rows, start) = (9, 6, 0);
    let mut tg = TestGraph::new(41);
    let rows = 20;
    let (logits, lt) = tg.embed("logits", rows, vocab, DType::F32, 6.0);
    let samples = tg.g.buffer("samples", Rows::Out, SAMPLE_WORDS, Elem::U32);
    let tail = tg.g.f32("tail", Rows::Out, vocab);
    tg.g.op(Op::TakeLastRows {
        x: logits,
        out: tail,
    });
    tg.g.op(Op::Sample {
        logits: tail,
        out: samples,
    });
    let token_ids = ids(&mut tg.rng, n, rows);
    let (graph, store) = tg.finish(vec![], Some((tail, samples)));
    let mut b = backend(graph, &store, WgpuOptions::default());
    let all = rows_of(&lt, &token_ids);
    let want_rows = &all[(n - out_rows) * vocab..];
    let (mask, valid) = (17u32, 2990u32);
    let mut cases = vec![SampleParams::greedy(mask, valid)];
    for (t, k, p, seed) in [
        (0.7, 50, 0.9, 1u64),
        (1.0, 0, 0.8, 2),
        (1.3, 5, 1.0, 3),
        (0.9, 0, 1.0, u64::MAX - 7),
        (2.0, 200, 0.95, 12_345_678_901),
    ] {
        for step in [0u32, 3] {
            cases.push(SampleParams {
                temperature: t,
                top_k: k,
                top_p: p,
                seed,
                step,
                mask,
                valid_vocab: valid,
            });
        }
    }
    for sp in cases {
        let out = b
            .step(&Step {
                tokens: &token_ids,
                start,
                keep: 0,
                block_length: 32,
                out_rows,
                sampling: sp,
                capture: Capture::Samples,
            })
            .unwrap();
        for (r, got) in out.samples.iter().enumerate() {
            let pos = (start + n - out_rows + r) as u32;
            let want = sampler::sample_row(&want_rows[r * vocab..(r + 1) * vocab], &sp, pos);
            assert_eq!(got.token, want.token, "{sp:?}: row {r}: token");
            assert_eq!(got.ranked, want.ranked, "{sp:?}: row {r}: ranked ids");
            assert!(
                (got.confidence - want.confidence).abs() <= 1e-5,
                "{sp:?}: row {r}: confidence {} vs {}",
                got.confidence,
                want.confidence
            );
        }
        let s = b.last_stats();
        assert_eq!(
            (s.submissions, s.bytes_read_back),
            (1, out_rows * SAMPLE_WORDS * 4)
        );
    }
}

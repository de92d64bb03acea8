//! Every kernel against the reference backend's op (`unmask_core::reference::ops`) on random
//! shapes, including sizes that are not multiples of any block or vector width. Needs a CUDA
//! device: without one each test prints `cuda: SKIPPED (why)` and returns
//! (`UNMASK_REQUIRE_CUDA=1` makes that a failure).

use std::collections::HashMap;
use std::io::Write;
use unmask_core::backend::{NO_TOKEN, SAMPLE_WORDS};
use unmask_core::decode::sampler::ranked;
use unmask_core::graph::{
    BlockRouting, BufId, Elem, ExpertSet, Graph, GraphBuilder, Heads, Op, Routing, Rows, WeightRole,
};
use unmask_core::reference::{ops, Matrix};
use unmask_core::synthetic::SplitMix;
use unmask_core::weights::{DType, Tensor, WeightStore};
use unmask_core::{SampleParams, Sampled, Step};
use unmask_cuda::harness::{KvPrefix, OpHarness};

fn harness() -> Option<OpHarness> {
    match OpHarness::open() {
        Ok(h) => Some(h),
        Err(e) => {
            let why = e.to_string();
            let why = why
                .strip_prefix("backend cuda: ")
                .unwrap_or(&why)
                .to_string();
            assert!(
                std::env::var_os("UNMASK_REQUIRE_CUDA").is_none(),
                "UNMASK_REQUIRE_CUDA is set but: {why}"
            );
            let _ = std::io::stderr().write_all(format!("cuda: SKIPPED ({why})\n").as_bytes());
            None
        }
    }
}

fn random(rng: &mut SplitMix, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| scale * rng.symmetric()).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn floats(v: &[u32]) -> Vec<f32> {
    v.iter().map(|&x| f32::from_bits(x)).collect()
}

/// A tensor of `values` stored as `dtype`.
fn tensor(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Tensor {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        #[allow(unreachable_patterns)]
        other => panic!("no test encoder for {other:?}"),
    };
    Tensor::from_bytes(dtype, shape, bytes).unwrap()
}

fn graph(b: GraphBuilder, input_ids: BufId, num_layers: usize) -> Graph {
    Graph {
        buffers: b.buffers,
        weights: b.weights,
        ops: b.ops,
        input_ids,
        logits: input_ids,
        samples: input_ids,
        hidden: vec![],
        num_layers,
    }
}

fn step(tokens: &[u32], start: usize, block: usize, out_rows: usize) -> Step<'_> {
    Step {
        tokens,
        start,
        keep: 0,
        block_length: block,
        out_rows,
        sampling: SampleParams::greedy(u32::MAX, u32::MAX),
        capture: Default::default(),
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}: element {i}: {g} vs {w} (scale {scale})"
        );
    }
}

type Outputs = HashMap<BufId, Vec<u32>>;

#[test]
fn matmul_in_every_float_format_and_odd_shapes() {
    let Some(h) = harness() else { return };
    let mut rng = SplitMix(1);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (n, k, m) in [
            (1, 64, 5),
            (7, 100, 33),
            (13, 256, 70),
            (33, 96, 41),
            (9, 2048, 40),
        ] {
            let x = random(&mut rng, n * k, 1.0);
            let wv = random(&mut rng, m * k, 0.1);
            let t = tensor(dtype, vec![m, k], &wv);
            let mut b = GraphBuilder::default();
            let ids = b.buffer("ids", Rows::Tokens, 1, Elem::U32);
            let xb = b.f32("x", Rows::Tokens, k);
            let ob = b.f32("out", Rows::Tokens, m);
            let w = b.weight("w", vec![m, k], WeightRole::Matrix);
            b.op(Op::MatMul {
                x: xb,
                weight: w,
                out: ob,
            });
            let g = graph(b, ids, 0);
            let mut store = WeightStore::default();
            store.insert("w", t.clone());
            let toks = vec![0u32; n];
            let (o, _) = h
                .run(&g, &store, &[(xb, bits(&x))], &[], &step(&toks, 0, 32, n))
                .unwrap();
            let mut want = vec![0f32; n * m];
            ops::matmul(&x, &Matrix::from_tensor(&t), &mut want);
            assert_close(
                &format!("matmul {dtype:?} {n}x{k}x{m}"),
                &floats(&o[&ob]),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn embed_rms_norm_add_swiglu_take_last_rows() {
    let Some(h) = harness() else { return };
    let mut rng = SplitMix(2);
    let (n, vocab, d, out) = (11, 37, 75, 4);
    let table = random(&mut rng, vocab * d, 1.0);
    let norm = random(&mut rng, d, 1.0);
    let other = random(&mut rng, n * d, 1.0);
    let tokens: Vec<u32> = (0..n).map(|i| (i * 7 % vocab) as u32).collect();
    let mut b = GraphBuilder::default();
    let ids = b.buffer("ids", Rows::Tokens, 1, Elem::U32);
    let e = b.f32("e", Rows::Tokens, d);
    let r = b.f32("r", Rows::Tokens, d);
    let y = b.f32("y", Rows::Tokens, d);
    let a = b.f32("a", Rows::Tokens, d);
    let s = b.f32("s", Rows::Tokens, d);
    let t = b.f32("t", Rows::Out, d);
    let tw = b.weight("table", vec![vocab, d], WeightRole::Embedding);
    let nw = b.weight("norm", vec![d], WeightRole::Vector);
    b.op(Op::Embed {
        ids,
        table: tw,
        out: e,
    });
    b.op(Op::RmsNorm {
        x: e,
        weight: nw,
        out: r,
        eps: 1e-6,
    });
    b.op(Op::Add { a: r, b: y, out: a });
    b.op(Op::SwiGlu {
        gate: a,
        up: y,
        out: s,
    });
    b.op(Op::TakeLastRows { x: s, out: t });
    let g = graph(b, ids, 0);
    let mut store = WeightStore::default();
    let tt = tensor(DType::BF16, vec![vocab, d], &table);
    store.insert("table", tt.clone());
    store.insert("norm", tensor(DType::F32, vec![d], &norm));
    let (o, _) = h
        .run(
            &g,
            &store,
            &[(y, bits(&other))],
            &[],
            &step(&tokens, 0, 32, out),
        )
        .unwrap();
    let tm = Matrix::from_tensor(&tt);
    let mut we = vec![0f32; n * d];
    for (i, &id) in tokens.iter().enumerate() {
        tm.row_into(id as usize, &mut we[i * d..(i + 1) * d]);
    }
    assert_eq!(floats(&o[&e]), we, "embed is exact");
    let mut wr = vec![0f32; n * d];
    ops::rms_norm(&we, &norm, 1e-6, &mut wr);
    assert_close("rms_norm", &floats(&o[&r]), &wr, 1e-6);
    let wa: Vec<f32> = wr.iter().zip(&other).map(|(p, q)| p + q).collect();
    assert_close("add", &floats(&o[&a]), &wa, 1e-6);
    let mut ws = vec![0f32; n * d];
    ops::swiglu(&wa, &other, &mut ws);
    assert_close("swiglu", &floats(&o[&s]), &ws, 1e-6);
    assert_close(
        "take_last_rows",
        &floats(&o[&t]),
        &ws[(n - out) * d..],
        1e-6,
    );
}

#[test]
fn qk_norm_rope_then_attention_over_a_cache() {
    let Some(h) = harness() else { return };
    let mut rng = SplitMix(3);
    for (heads, rot, start, n, block, norms) in [
        (
            Heads {
                q: 4,
                kv: 2,
                dim: 32,
            },
            16,
            37,
            20,
            16,
            true,
        ),
        (
            Heads {
                q: 6,
                kv: 3,
                dim: 40,
            },
            20,
            0,
            9,
            4,
            false,
        ),
        (
            Heads {
                q: 16,
                kv: 4,
                dim: 128,
            },
            64,
            300,
            64,
            32,
            true,
        ),
    ] {
        let d = heads.dim;
        let width = (heads.q + 2 * heads.kv) * d;
        let kvw = heads.kv * d;
        let qkv = random(&mut rng, n * width, 1.0);
        let qn = random(&mut rng, d, 1.0);
        let kn = random(&mut rng, d, 1.0);
        let prefix = KvPrefix {
            k: random(&mut rng, start * kvw, 1.0),
            v: random(&mut rng, start * kvw, 1.0),
        };
        let mut b = GraphBuilder::default();
        let ids = b.buffer("ids", Rows::Tokens, 1, Elem::U32);
        let qb = b.f32("qkv", Rows::Tokens, width);
        let ob = b.f32("out", Rows::Tokens, heads.q * d);
        let (q_norm, k_norm) = if norms {
            (
                Some(b.weight("qn", vec![d], WeightRole::Vector)),
                Some(b.weight("kn", vec![d], WeightRole::Vector)),
            )
        } else {
            (None, None)
        };
        b.op(Op::QkNormRope {
            qkv: qb,
            q_norm,
            k_norm,
            heads,
            rot_dim: rot,
            theta: 600_000.0,
            eps: 1e-6,
        });
        b.op(Op::Attention {
            qkv: qb,
            layer: 0,
            heads,
            out: ob,
        });
        let g = graph(b, ids, 1);
        let mut store = WeightStore::default();
        store.insert("qn", tensor(DType::F32, vec![d], &qn));
        store.insert("kn", tensor(DType::F32, vec![d], &kn));
        let toks = vec![0u32; n];
        let (o, caches) = h
            .run(
                &g,
                &store,
                &[(qb, bits(&qkv))],
                std::slice::from_ref(&prefix),
                &step(&toks, start, block, n),
            )
            .unwrap();
        let mut want = qkv.clone();
        let inv = ops::rope_inv_freq(rot, 600_000.0);
        ops::qk_norm_rope(
            &mut want,
            heads,
            norms.then_some(qn.as_slice()),
            norms.then_some(kn.as_slice()),
            1e-6,
            &inv,
            start,
        );
        let what = format!("qk_norm_rope {heads:?} at {start}");
        assert_close(&what, &floats(&o[&qb]), &want, 2e-5);
        let (mut kc, mut vc) = (prefix.k.clone(), prefix.v.clone());
        for i in 0..n {
            let row = &want[i * width..(i + 1) * width];
            kc.extend_from_slice(&row[heads.q * d..heads.q * d + kvw]);
            vc.extend_from_slice(&row[heads.q * d + kvw..]);
        }
        assert_close("k cache", &caches[0].0, &kc, 2e-5);
        assert_close("v cache", &caches[0].1, &vc, 2e-5);
        let mut att = vec![0f32; n * heads.q * d];
        ops::attention(&want, heads, &kc, &vc, start, block, &mut att);
        let what = format!("attention {heads:?} start {start} n {n} block {block}");
        assert_close(&what, &floats(&o[&ob]), &att, 2e-5);
    }
}

fn routing(e: usize, k: usize, g: usize, tg: usize) -> Routing {
    Routing {
        num_experts: e,
        top_k: k,
        n_group: g,
        topk_group: tg,
        scaling: 2.5,
        block: None,
    }
}

/// LLaDA2.2 block routing: `capacity` experts allowed per routing block of `size` positions.
fn block_routing(e: usize, k: usize, size: usize, capacity: usize) -> Routing {
    Routing {
        block: Some(BlockRouting { size, capacity }),
        ..routing(e, k, 1, 1)
    }
}

/// Runs MoeRoute then MoeExperts over `n` tokens at positions `start..`; returns the outputs and
/// the buffers.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn moe(
    h: &OpHarness,
    r: Routing,
    start: usize,
    n: usize,
    hidden: usize,
    inter: usize,
    dtype: DType,
    seed: u64,
) -> (
    Outputs,
    Vec<f32>,
    Vec<f32>,
    Vec<f32>,
    Vec<Tensor>,
    BufId,
    BufId,
    BufId,
) {
    let mut rng = SplitMix(seed);
    let e = r.num_experts;
    let x = random(&mut rng, n * hidden, 1.0);
    let logits = random(&mut rng, n * e, 3.0);
    let bias = random(&mut rng, e, 0.5);
    let mut b = GraphBuilder::default();
    let ids_in = b.buffer("ids_in", Rows::Tokens, 1, Elem::U32);
    let lb = b.f32("logits", Rows::Tokens, e);
    let xb = b.f32("x", Rows::Tokens, hidden);
    let ids = b.buffer("ids", Rows::Tokens, r.top_k, Elem::U32);
    let wb = b.f32("w", Rows::Tokens, r.top_k);
    let ob = b.f32("out", Rows::Tokens, hidden);
    let bw = b.weight("bias", vec![e], WeightRole::Vector);
    let mut set = ExpertSet {
        gate: vec![],
        up: vec![],
        down: vec![],
    };
    let mut store = WeightStore::default();
    let mut mats = Vec::new();
    for j in 0..e {
        for (kind, shape) in [
            ("gate", vec![inter, hidden]),
            ("up", vec![inter, hidden]),
            ("down", vec![hidden, inter]),
        ] {
            let name = format!("e{j}.{kind}");
            let id = b.weight(&name, shape.clone(), WeightRole::Matrix);
            let t = tensor(
                dtype,
                shape.clone(),
                &random(&mut rng, shape[0] * shape[1], 0.2),
            );
            store.insert(&name, t.clone());
            mats.push(t);
            match kind {
                "gate" => set.gate.push(id),
                "up" => set.up.push(id),
                _ => set.down.push(id),
            }
        }
    }
    store.insert("bias", tensor(DType::F32, vec![e], &bias));
    b.op(Op::MoeRoute {
        logits: lb,
        bias: Some(bw),
        routing: r,
        ids,
        weights: wb,
    });
    b.op(Op::MoeExperts {
        x: xb,
        ids,
        weights: wb,
        experts: set,
        out: ob,
    });
    let g = graph(b, ids_in, 0);
    let toks = vec![0u32; n];
    let (o, _) = h
        .run(
            &g,
            &store,
            &[(lb, bits(&logits)), (xb, bits(&x))],
            &[],
            &step(&toks, start, 32, n),
        )
        .unwrap();
    (o, x, logits, bias, mats, ids, wb, ob)
}

#[test]
fn routing_and_grouped_experts() {
    let Some(h) = harness() else { return };
    // (routing, start, n, hidden, inter, dtype): block routing steps start on a routing block
    // boundary and end inside one (a partial last block); capacity 3 < top_k 4 makes rows pick
    // experts outside the allowed set (-inf, by id).
    for (r, start, n, hidden, inter, dtype) in [
        (routing(16, 4, 4, 2), 0, 9, 40, 24, DType::F32),
        (routing(16, 4, 4, 2), 0, 33, 64, 32, DType::BF16),
        (routing(8, 3, 1, 1), 0, 5, 72, 20, DType::F16),
        (routing(256, 8, 8, 4), 0, 64, 256, 64, DType::BF16),
        (block_routing(64, 8, 32, 16), 64, 45, 64, 32, DType::F32),
        (block_routing(16, 4, 8, 5), 24, 21, 40, 24, DType::BF16),
        (block_routing(16, 4, 4, 3), 0, 10, 40, 24, DType::F32),
        (block_routing(256, 8, 32, 96), 96, 32, 64, 32, DType::BF16),
    ] {
        let (o, x, logits, bias, mats, ids, wb, ob) = moe(&h, r, start, n, hidden, inter, dtype, 4);
        let e = r.num_experts;
        let mut want_ids = Vec::new();
        let mut want_w = Vec::new();
        match r.block {
            Some(b) => {
                for (i, w) in ops::route_blocks(&logits, Some(&bias), &r, b, start).unwrap() {
                    want_ids.extend(i);
                    want_w.extend(w);
                }
            }
            None => {
                for t in 0..n {
                    let (i, w) = ops::route(&logits[t * e..(t + 1) * e], Some(&bias), &r);
                    want_ids.extend(i);
                    want_w.extend(w);
                }
            }
        }
        assert_eq!(o[&ids], want_ids, "route ids {r:?} start {start} n {n}");
        assert_close("route weights", &floats(&o[&wb]), &want_w, 1e-6);
        let m: Vec<Matrix> = mats.iter().map(Matrix::from_tensor).collect();
        let ex = ops::Experts {
            gate: m.iter().step_by(3).collect(),
            up: m.iter().skip(1).step_by(3).collect(),
            down: m.iter().skip(2).step_by(3).collect(),
        };
        let mut want = vec![0f32; n * hidden];
        ops::moe_experts(&x, &want_ids, &want_w, r.top_k, &ex, &mut want);
        let what = format!("moe_experts {dtype:?} n {n} hidden {hidden} inter {inter}");
        assert_close(&what, &floats(&o[&ob]), &want, 1e-5);
    }
}

#[test]
fn block_routing_refuses_a_step_inside_a_routing_block() {
    let Some(h) = harness() else { return };
    let r = block_routing(16, 4, 8, 5);
    let mut b = GraphBuilder::default();
    let ids_in = b.buffer("ids_in", Rows::Tokens, 1, Elem::U32);
    let lb = b.f32("logits", Rows::Tokens, 16);
    let ids = b.buffer("ids", Rows::Tokens, 4, Elem::U32);
    let wb = b.f32("w", Rows::Tokens, 4);
    b.op(Op::MoeRoute {
        logits: lb,
        bias: None,
        routing: r,
        ids,
        weights: wb,
    });
    let g = graph(b, ids_in, 0);
    let toks = vec![0u32; 8];
    let err = h.run(
        &g,
        &WeightStore::default(),
        &[],
        &[],
        &step(&toks, 12, 8, 8),
    );
    assert!(
        err.is_err(),
        "a step at 12 starts inside a routing block of 8"
    );
}

fn sample_rows(h: &OpHarness, logits: &[f32], vocab: usize, p: SampleParams) -> Vec<Sampled> {
    let rows = logits.len() / vocab;
    let mut b = GraphBuilder::default();
    let ids = b.buffer("ids", Rows::Tokens, 1, Elem::U32);
    let lb = b.f32("logits", Rows::Out, vocab);
    let sb = b.buffer("samples", Rows::Out, SAMPLE_WORDS, Elem::U32);
    b.op(Op::Sample {
        logits: lb,
        out: sb,
    });
    let g = graph(b, ids, 0);
    let toks = vec![0u32; rows + 5];
    let mut s = step(&toks, 100, 32, rows);
    s.sampling = p;
    let (o, _) = h
        .run(&g, &WeightStore::default(), &[(lb, bits(logits))], &[], &s)
        .unwrap();
    Sampled::from_words(&o[&sb])
}

#[test]
fn greedy_and_seeded_sampling_match_the_host_sampler() {
    let Some(h) = harness() else { return };
    let mut rng = SplitMix(5);
    let (rows, vocab) = (6, 3001);
    let logits = random(&mut rng, rows * vocab, 8.0);
    // The first position of the rows: start + tokens - out_rows in sample_rows.
    let first = 100 + 5;
    let greedy = SampleParams::greedy(17, 2990);
    let got = sample_rows(&h, &logits, vocab, greedy);
    for (r, g) in got.iter().enumerate() {
        let want =
            unmask_core::decode::sampler::greedy(&logits[r * vocab..(r + 1) * vocab], &greedy);
        assert_eq!(g.token, want.token, "greedy row {r}");
        assert!(
            (g.confidence - want.confidence).abs() <= 1e-7,
            "{g:?} vs {want:?}"
        );
        let ranked = ranked(&logits[r * vocab..(r + 1) * vocab], &greedy);
        assert_eq!(g.ranked, ranked, "greedy row {r}: ranked");
        assert_eq!(g.ranked[0], g.token);
    }
    let mut agree = 0;
    let mut total = 0;
    for (t, k, p) in [
        (0.7, 0, 1.0),
        (1.0, 40, 1.0),
        (1.3, 0, 0.9),
        (0.9, 100, 0.8),
        (1.0, 1, 1.0),
    ] {
        for seed in 0..8u64 {
            let mut sp = greedy;
            sp.temperature = t;
            sp.top_k = k;
            sp.top_p = p;
            sp.seed = seed * 0x1_0000_0001;
            sp.step = seed as u32 * 3;
            let got = sample_rows(&h, &logits, vocab, sp);
            for (r, g) in got.iter().enumerate() {
                let row = &logits[r * vocab..(r + 1) * vocab];
                let want =
                    unmask_core::decode::sampler::sample_seeded(row, &sp, (first + r) as u32);
                // Ranked does not depend on the draw: always exact.
                assert_eq!(
                    g.ranked,
                    ranked(row, &sp),
                    "T {t} k {k} p {p} row {r}: ranked"
                );
                total += 1;
                if g.token == want.token {
                    agree += 1;
                    assert!(
                        (g.confidence - want.confidence).abs() <= 1e-5 * want.confidence.max(1e-3),
                        "T {t} k {k} p {p}: {g:?} vs {want:?}"
                    );
                }
            }
        }
    }
    // Sums run in another order than the host's: a draw may only differ where the uniform falls
    // within float rounding of a boundary.
    println!("seeded sampling: {agree}/{total} draws agree with the host");
    assert!(
        agree * 100 >= total * 99,
        "{agree}/{total} seeded draws agree"
    );
}

#[test]
fn ranked_ids_skip_the_mask_and_padding_and_break_ties_low() {
    let Some(h) = harness() else { return };
    // The host sampler's own example: mask 3, ids >= 6 are padding, 1 and 4 tie.
    let p = SampleParams::greedy(3, 6);
    let logits = [0.0, 2.0, 1.0, 9.0, 2.0, 5.0, 10.0];
    let got = sample_rows(&h, &logits, 7, p);
    assert_eq!(got[0].ranked, [5, 1, 4]);
    assert_eq!(got[0].token, 5);
    // Fewer than three allowed ids.
    let got = sample_rows(&h, &[1.0, 0.5], 2, SampleParams::greedy(u32::MAX, 2));
    assert_eq!(got[0].ranked, [0, 1, NO_TOKEN]);
    let got = sample_rows(&h, &[1.0, 0.5, 7.0], 3, SampleParams::greedy(2, 3));
    assert_eq!(got[0].ranked, [0, 1, NO_TOKEN]);
    // Wide rows of integer logits: ties everywhere, across threads and warps, in both modes.
    let mut rng = SplitMix(6);
    let (rows, vocab) = (5, 5003);
    let logits: Vec<f32> = random(&mut rng, rows * vocab, 4.0)
        .into_iter()
        .map(f32::round)
        .collect();
    for temperature in [0.0, 0.8] {
        let mut sp = SampleParams::greedy(7, 4990);
        sp.temperature = temperature;
        sp.seed = 3;
        let got = sample_rows(&h, &logits, vocab, sp);
        for (r, g) in got.iter().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            assert_eq!(g.ranked, ranked(row, &sp), "T {temperature} row {r}");
        }
    }
}

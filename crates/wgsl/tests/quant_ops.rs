//! The q8_0 and q4 shaders against the reference backend's kernels on random shapes (column
//! counts that are not multiples of the 32-value block, odd block counts, matrices split across
//! several bindings): the embedding gather returns exactly the dequantized rows, and matmul
//! matches `reference::ops::matmul` over the same packed matrix within 1e-5 relative.
//!
//! Without an adapter the test prints `wgpu: SKIPPED (...)` and passes, unless
//! `UNMASK_REQUIRE_WGPU` is set (CI).

use unmask_core::backend::{Backend, Capture, SampleParams, Step};
use unmask_core::graph::{Elem, Graph, GraphBuilder, Op, Rows, WeightRole};
use unmask_core::quant::{quantize, QuantFormat};
use unmask_core::reference::{ops, Matrix};
use unmask_core::synthetic::SplitMix;
use unmask_core::weights::{DType, Tensor, WeightStore};
use unmask_wgsl::format::WeightFormat;
use unmask_wgsl::{WgpuBackend, WgpuOptions};

fn adapter_or_skip() -> bool {
    unmask_wgsl::probe_or_skip().is_some()
}

fn packed(f: QuantFormat, rows: usize, cols: usize, rng: &mut SplitMix) -> Tensor {
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal(1.0)).collect();
    let (bytes, _) = quantize(f, rows, cols, &v).unwrap();
    Tensor::from_bytes(DType::from_quant(f), vec![rows, cols], bytes).unwrap()
}

#[test]
fn device_rows_hold_the_blocks_in_scale_led_pairs() {
    // 70 columns are stored as two blocks (32 and 38 columns) and sit on the device as three
    // 32-column pieces (an odd count: one pair and a single); the last two carry the second
    // block's scale, the last one is zero past column 70.
    let mut rng = SplitMix(3);
    for (f, cw) in [(QuantFormat::Q8_0, 8usize), (QuantFormat::Q4, 4)] {
        let t = packed(f, 2, 70, &mut rng);
        let wf = WeightFormat::of(t.dtype).unwrap();
        let stride = wf.row_words(70);
        assert_eq!(stride, (1 + 2 * cw) + (1 + cw));
        let mut dst = vec![0u32; 2 * stride];
        wf.pack_rows(&t, 70, 0..2, &mut dst);
        let p = t.packed().unwrap();
        assert_eq!(p.nb, 2);
        let scale = |blk: usize| u16::from_le_bytes([p.scales[2 * blk], p.scales[2 * blk + 1]]);
        // The first code word of row 1's piece j: its bytes in the row's codes, zero past the row.
        let code = |j: usize| {
            let row = &p.codes[p.row_code_bytes..2 * p.row_code_bytes];
            let o = f.code_bytes(32 * j);
            let mut w = [0u8; 4];
            for (i, b) in w.iter_mut().enumerate() {
                *b = row.get(o + i).copied().unwrap_or(0);
            }
            u32::from_le_bytes(w)
        };
        let row1 = &dst[stride..];
        assert_eq!(row1[0], scale(2) as u32 | (scale(3) as u32) << 16);
        assert_eq!(row1[1], code(0));
        assert_eq!(row1[1 + cw], code(1));
        assert_eq!(row1[1 + 2 * cw], scale(3) as u32);
        assert_eq!(row1[2 + 2 * cw], code(2));
        let used = f.code_bytes(70 - 64).div_ceil(4);
        assert!(row1[2 + 2 * cw + used..].iter().all(|&w| w == 0), "{f}");
    }
}

#[test]
fn quantized_embed_and_matmul_match_the_reference() {
    if !adapter_or_skip() {
        return;
    }
    // (tokens, in, out, binding limit): odd block counts, a partial last block, more rows than a
    // tile, and bindings small enough to split the table and the matrix.
    let cases = [
        (1, 32, 5, None),
        (3, 40, 45, None),
        (9, 96, 100, Some(4096)),
        (33, 130, 70, None),
        (40, 256, 257, Some(10_000)),
    ];
    for f in QuantFormat::ALL {
        for (ci, &(n, k, m, limit)) in cases.iter().enumerate() {
            let mut rng = SplitMix(ci as u64 + 17);
            let table_rows = 2 * n + 3;
            let table = packed(f, table_rows, k, &mut rng);
            let w = packed(f, m, k, &mut rng);
            let mut g = GraphBuilder::default();
            let ids = g.buffer("input_ids", Rows::Tokens, 1, Elem::U32);
            let tid = g.weight("table", vec![table_rows, k], WeightRole::Embedding);
            let wid = g.weight("w", vec![m, k], WeightRole::Matrix);
            let x = g.f32("x", Rows::Tokens, k);
            let out = g.f32("out", Rows::Tokens, m);
            g.op(Op::Embed {
                ids,
                table: tid,
                out: x,
            });
            g.op(Op::MatMul {
                x,
                weight: wid,
                out,
            });
            let logits = g.f32("unused_logits", Rows::Out, 1);
            let samples = g.buffer("unused_samples", Rows::Out, 2, Elem::U32);
            let graph = Graph {
                buffers: g.buffers,
                weights: g.weights,
                ops: g.ops,
                input_ids: ids,
                logits,
                samples,
                hidden: vec![x, out],
                num_layers: 0,
            };
            let mut store = WeightStore::default();
            store.insert("table", table.clone());
            store.insert("w", w.clone());
            let options = WgpuOptions {
                weight_binding_limit: limit,
                ..Default::default()
            };
            let mut b = WgpuBackend::new(graph, &store, &options, &mut |_, _| {}).unwrap();
            let tokens: Vec<u32> = (0..n)
                .map(|_| (rng.next_u64() % table_rows as u64) as u32)
                .collect();
            let got = b
                .step(&Step {
                    tokens: &tokens,
                    start: 0,
                    keep: n,
                    block_length: 32,
                    out_rows: n,
                    sampling: SampleParams::greedy(u32::MAX, u32::MAX),
                    capture: Capture::Hidden,
                })
                .unwrap()
                .hidden;
            let what = format!("{f} case {ci} (n {n}, [{m}, {k}], limit {limit:?})");
            let (tm, wm) = (Matrix::from_tensor(&table), Matrix::from_tensor(&w));
            let mut want_x = vec![0f32; n * k];
            for (i, &id) in tokens.iter().enumerate() {
                tm.row_into(id as usize, &mut want_x[i * k..(i + 1) * k]);
            }
            assert_eq!(
                got[0], want_x,
                "{what}: embedding rows are the dequantized rows"
            );
            let mut want = vec![0f32; n * m];
            ops::matmul(&want_x, &wm, &mut want);
            let scale = want.iter().fold(f32::MIN_POSITIVE, |a, v| a.max(v.abs()));
            let err = got[1]
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err <= 1e-5 * scale,
                "{what}: matmul max error {err} (scale {scale})"
            );
        }
    }
}

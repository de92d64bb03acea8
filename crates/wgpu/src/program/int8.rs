//! `WgpuOptions::int8_dots`: the matrix-vector kernels' integer form for q8_0 / q4 matrices
//! and experts (shaders/matvec/int8.wgsl). Before such a product its activation rows are
//! written, 8 bits per column and a scale per block of 32, into the shared `xq` buffer
//! (shaders/int8/quantize.wgsl); the product's matrix-vector variants read them there. The
//! kernel that writes the product's input does it where it can (`Folds`: a norm, attention,
//! the MoE combine's norm), else a `quantize_rows` dispatch before the product, which runs only
//! when a matrix-vector variant does (the tiled kernels, for passes with a sequence of more
//! than 32 rows, keep the f32 activations).

use super::fuse::Fusions;
use super::{Choice, Context, Extent, Grid, Pending};
use crate::format::WeightFormat;
use crate::kernels::Kernel;
use crate::shaders::has_int_form;
use crate::weights::ExpertStacks;
use unmask_core::graph::{BufId, Graph, Op};

/// Columns per quantization block (and the cpu's, fast/int8.rs).
const BLOCK: usize = 32;

/// Words of one quantized row of `cols` columns: per block, its scale and 8 words of bytes.
pub fn row_words(cols: usize) -> usize {
    cols / BLOCK * 9
}

/// Whether a product of `format` with rows of `cols` columns can take the integer form.
pub fn eligible(format: WeightFormat, cols: usize) -> bool {
    has_int_form(format) && cols > 0 && cols.is_multiple_of(BLOCK)
}

/// Whether an MoE layer's experts can take the integer form (both of their products).
pub fn experts_eligible(ex: &ExpertStacks) -> bool {
    eligible(ex.format, ex.hidden) && eligible(ex.format, ex.inter)
}

/// Whether this product takes the integer form: the backend quantizes (it has `xq`) and the
/// matrix qualifies.
pub(super) fn takes(cx: &Context, format: WeightFormat, cols: usize) -> bool {
    cx.xq.is_some() && eligible(format, cols)
}

/// `takes` for an MoE layer's experts (both of their products).
pub(super) fn takes_experts(cx: &Context, ex: &ExpertStacks) -> bool {
    cx.xq.is_some() && experts_eligible(ex)
}

/// The integer form's matrix-vector kernel for `kernel` (an f32 one).
pub(super) fn int_kernel(kernel: Kernel) -> Kernel {
    match kernel {
        Kernel::Matvec8 => Kernel::Matvec8Q,
        Kernel::Matvec32 => Kernel::Matvec32Q,
        Kernel::MoeGateUpMv => Kernel::MoeGateUpMvQ,
        Kernel::MoeDownMv => Kernel::MoeDownMvQ,
        _ => unreachable!("{kernel:?} has no integer form"),
    }
}

/// The dispatch quantizing `x` (rows of `k` columns, `per` rows a grid row, grid rows counted
/// by `rows`) into `xq`, from the module of the product's `format`. It runs only where the
/// product it feeds takes a matrix-vector variant, chosen the same way (`choice`, at most
/// `max_rows`): its own grid is empty.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantize(
    cx: &Context,
    format: WeightFormat,
    x: wgpu::Buffer,
    k: usize,
    per: usize,
    rows: Extent,
    choice: Choice,
    max_rows: usize,
) -> Pending {
    let xq = cx
        .xq
        .expect("int8 products only with the xq buffer")
        .clone();
    let blocks = (per * (k / BLOCK)).div_ceil(64) as u32;
    Pending {
        kernel: Kernel::QuantizeRows,
        format: Some(format),
        buffers: vec![(2, x), (XQ_OUT, xq)],
        params: (8, [k as u32, per as u32, 0, 0, 0, 0, 0, 0]),
        grid: Grid::Direct(Extent::Fixed(0), Extent::Fixed(0)),
        needs_out: matches!(rows, Extent::Out(_)),
        small: Some((
            choice,
            vec![(
                max_rows,
                Kernel::QuantizeRows,
                Grid::Direct(Extent::Fixed(blocks), rows),
            )],
        )),
    }
}

/// The integer kernels' binding of the quantized rows.
pub(super) fn xq_binding(cx: &Context) -> (u32, wgpu::Buffer) {
    (
        9,
        cx.xq
            .expect("int8 products only with the xq buffer")
            .clone(),
    )
}

/// Where kernels write quantized rows (`xq_out` in shaders/int8/quantize.wgsl).
const XQ_OUT: u32 = 30;

/// The binding of the quantized rows a kernel writes.
pub(super) fn xq_out_binding(cx: &Context) -> (u32, wgpu::Buffer) {
    (
        XQ_OUT,
        cx.xq
            .expect("quantized rows only with the xq buffer")
            .clone(),
    )
}

/// Storage buffers of the MoE combine that also quantizes (moe_combine_residual_q: ten of its
/// own and the step parameters).
const COMBINE_Q_STORAGE: usize = 11;

/// The products whose input rows are quantized by the kernel that writes that input (its `_q`
/// entry point, shaders/int8/), found once at load; such a product has no quantize dispatch of
/// its own. The writers that can: a norm over whole rows, attention (head_dim a multiple of
/// 32, so that a workgroup's heads are whole blocks), the MoE combine's fused norm (where the
/// adapter allows it one more binding). One `xq` buffer serves every product, so a writer
/// quantizes for a product only when nothing uses `xq` between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folds {
    /// Per op: its input rows are quantized by an earlier op's dispatches.
    pub prequantized: Vec<bool>,
    /// Per op: its dispatches quantize what they write (its `_q` kernels).
    pub quantizes: Vec<bool>,
}

impl Folds {
    /// No product's input is quantized by its writer (every one has its quantize dispatch).
    pub fn none(ops: usize) -> Folds {
        Folds {
            prequantized: vec![false; ops],
            quantizes: vec![false; ops],
        }
    }

    /// `consumes(i)`: whether op `i` (a `MatMul` or `MoeExperts` not absorbed by another)
    /// takes the integer form over its input; `storage_per_stage`: the adapter's limit.
    pub fn find(
        graph: &Graph,
        fusions: &Fusions,
        consumes: &dyn Fn(usize) -> bool,
        storage_per_stage: usize,
    ) -> Folds {
        let n = graph.ops.len();
        let mut f = Folds::none(n);
        // The latest use of `xq` so far as (op, phase): at a product's op, its quantize
        // dispatch writes (0) and the product reads (1), the experts' down product then
        // quantizes and reads the activations (2, 3); a writer's `_q` kernel comes after all
        // of its op's (4). A writer may quantize only past every use before its product.
        let mut last: Option<(usize, u8)> = None;
        // The rows `xq` holds after the last product: its input, when a dense product.
        let mut held: Option<BufId> = None;
        for i in (0..n).filter(|&i| !fusions.absorbed(i) && consumes(i)) {
            let (x, last_phase) = match graph.ops[i] {
                Op::MatMul { x, .. } => (x, 1),
                Op::MoeExperts { x, .. } => (x, 3),
                _ => continue,
            };
            // A product of the rows the last one read (the dense MLP's up after its gate),
            // where nothing wrote them since, reads them as they are.
            let unchanged = last
                .zip(last_writer(graph, i, x))
                .is_some_and(|((p, _), j)| fusions.host[j] < p);
            if held == Some(x) && unchanged {
                f.prequantized[i] = true;
            } else if let Some(h) = quantizing_writer(graph, fusions, i, x, storage_per_stage)
                .filter(|&h| last.is_none_or(|l| (h, 4) > l))
            {
                f.quantizes[h] = true;
                f.prequantized[i] = true;
            }
            last = Some((i, last_phase));
            held = matches!(graph.ops[i], Op::MatMul { .. }).then_some(x);
        }
        f
    }
}

/// The last op before `i` that writes `x`.
fn last_writer(graph: &Graph, i: usize, x: BufId) -> Option<usize> {
    (0..i).rev().find(|&j| graph.ops[j].writes().contains(&x))
}

/// The op whose dispatches can quantize `x`, op `i`'s input, as they write it: the host of its
/// last writer before `i`, where that writer has a `_q` kernel for it.
fn quantizing_writer(
    graph: &Graph,
    fusions: &Fusions,
    i: usize,
    x: BufId,
    storage_per_stage: usize,
) -> Option<usize> {
    let j = last_writer(graph, i, x)?;
    let host = fusions.host[j];
    let cols = graph.buffer(x).cols;
    match graph.ops[j] {
        Op::RmsNorm { weight, out, .. } | Op::AddRmsNorm { weight, out, .. } if out == x => {
            let whole_rows = graph.weight(weight).shape.iter().product::<usize>() == cols;
            let by_combine = || {
                storage_per_stage >= COMBINE_Q_STORAGE
                    && fusions.residual[host]
                        .and_then(|r| r.norm)
                        .is_some_and(|(_, _, normed)| normed == x)
            };
            (whole_rows && (host == j || by_combine())).then_some(host)
        }
        Op::Attention { heads, out, .. } if out == x && host == j => {
            (heads.dim.is_multiple_of(BLOCK) && cols == heads.q * heads.dim).then_some(j)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unmask_core::synthetic::shape_config;

    /// The builder's graph (a dense layer, then MoE layers) with its fusions, and the folds
    /// where every product takes the integer form and the adapter allows `storage` buffers.
    fn folds(storage: usize) -> (Graph, Fusions, Folds) {
        let mut c = shape_config("tiny").unwrap();
        c.num_hidden_layers = 3;
        let g = unmask_core::model::llada2::build(&c);
        let fusions = Fusions::find(&g, &mut |_, _| true, u64::MAX, usize::MAX);
        let consumes = |i: usize| matches!(g.ops[i], Op::MatMul { .. } | Op::MoeExperts { .. });
        let f = Folds::find(&g, &fusions, &consumes, storage);
        (g, fusions, f)
    }

    /// The product that writes `b`.
    fn product_of(g: &Graph, b: BufId) -> usize {
        g.ops
            .iter()
            .position(|op| matches!(op, Op::MatMul { out, .. } if *out == b))
            .expect("a product writes it")
    }

    /// The product that reads `b`.
    fn product_on(g: &Graph, b: BufId) -> usize {
        g.ops
            .iter()
            .position(|op| matches!(op, Op::MatMul { x, .. } if *x == b))
            .expect("a product reads it")
    }

    /// In every layer the QKV product's rows come from the norm before it (the dense layer's
    /// norm, the previous MoE layer's combine), the output projection's from attention, the
    /// experts' from the norm after attention: three quantize dispatches fewer a MoE layer.
    #[test]
    fn the_writers_quantize_every_layers_products() {
        let (g, fusions, f) = folds(usize::MAX);
        for (a, op) in g.ops.iter().enumerate() {
            if let Op::Attention { qkv, out, .. } = *op {
                assert!(f.prequantized[product_of(&g, qkv)], "QKV before op {a}");
                assert!(f.prequantized[product_on(&g, out)], "o-proj after op {a}");
                assert!(f.quantizes[a]);
            }
            if matches!(op, Op::MoeExperts { .. }) {
                assert!(f.prequantized[a], "experts at op {a}");
            }
        }
        // Only norms, attention and MoE layers (their combines) quantize what they write.
        for (h, _) in f.quantizes.iter().enumerate().filter(|(_, q)| **q) {
            let writer = matches!(
                g.ops[h],
                Op::RmsNorm { .. } | Op::AddRmsNorm { .. } | Op::Attention { .. }
            ) || fusions.residual[h].is_some_and(|r| r.norm.is_some());
            assert!(writer, "op {h}: {:?}", g.ops[h]);
        }
    }

    /// The dense layer's gate and up products read one norm: the norm quantizes for the first,
    /// and the second reads the same rows (nothing wrote them or `xq` since).
    #[test]
    fn a_second_product_of_the_same_rows_reads_them_again() {
        let (g, _, f) = folds(usize::MAX);
        let swiglu = g
            .ops
            .iter()
            .position(|op| matches!(op, Op::SwiGlu { .. }))
            .expect("the dense layer's MLP");
        let Op::SwiGlu { gate, up, .. } = g.ops[swiglu] else {
            unreachable!()
        };
        let (gate, up) = (product_of(&g, gate), product_of(&g, up));
        assert!(gate < up);
        assert!(f.prequantized[gate] && f.prequantized[up]);
        let Op::MatMul { x, .. } = g.ops[gate] else {
            unreachable!()
        };
        assert!(f.quantizes[last_writer(&g, gate, x).unwrap()]);
        // The down product's input (the SwiGLU's) is quantized by a dispatch of its own.
        let down = product_on(&g, swiglu_out(&g, swiglu));
        assert!(!f.prequantized[down]);
    }

    fn swiglu_out(g: &Graph, i: usize) -> BufId {
        match g.ops[i] {
            Op::SwiGlu { out, .. } => out,
            _ => unreachable!(),
        }
    }

    /// A product of the rows the product before it read takes them as quantized only where
    /// nothing wrote them in between: two stand-in products of the QKV buffer, side by side
    /// before the QK norm and RoPE (which write it in place), then on either side of it.
    #[test]
    fn rows_written_since_are_quantized_again() {
        for around_rope in [false, true] {
            let (mut g, _, _) = folds(usize::MAX);
            let rope = g
                .ops
                .iter()
                .position(|op| matches!(op, Op::QkNormRope { .. }))
                .unwrap();
            let Op::QkNormRope { qkv, .. } = g.ops[rope] else {
                unreachable!()
            };
            let Op::MatMul { weight, .. } = g.ops[product_of(&g, qkv)] else {
                unreachable!()
            };
            // Written by the attention after them, read by nothing before it.
            let Op::Attention { out, .. } = g.ops[rope + 1] else {
                unreachable!()
            };
            let stand_in = Op::MatMul {
                x: qkv,
                weight,
                out,
            };
            let second = if around_rope { rope + 2 } else { rope + 1 };
            g.ops.insert(rope, stand_in.clone());
            g.ops.insert(second, stand_in);
            let fusions = Fusions::find(&g, &mut |_, _| true, u64::MAX, usize::MAX);
            let consumes = |i: usize| matches!(g.ops[i], Op::MatMul { .. } | Op::MoeExperts { .. });
            let f = Folds::find(&g, &fusions, &consumes, usize::MAX);
            assert!(!f.prequantized[rope], "the first stand-in quantizes");
            assert_eq!(
                f.prequantized[second], !around_rope,
                "around the rope: {around_rope}"
            );
        }
    }

    /// Below the combine's eleven storage buffers a stage, the QKV product after a MoE layer
    /// quantizes its rows itself; the other folds stay.
    #[test]
    fn ten_storage_buffers_keep_the_combine_from_quantizing() {
        let (g, fusions, f) = folds(10);
        let mut after_moe = 0;
        for (a, op) in g.ops.iter().enumerate() {
            if let Op::Attention { qkv, out, .. } = *op {
                let qkv = product_of(&g, qkv);
                let Op::MatMul { x, .. } = g.ops[qkv] else {
                    unreachable!()
                };
                let by_combine = fusions
                    .residual
                    .iter()
                    .any(|r| r.and_then(|r| r.norm).is_some_and(|n| n.2 == x));
                after_moe += by_combine as usize;
                assert_eq!(f.prequantized[qkv], !by_combine, "QKV before op {a}");
                assert!(f.prequantized[product_on(&g, out)], "o-proj after op {a}");
            }
        }
        assert!(after_moe > 0);
        assert!((0..g.ops.len()).all(|h| !f.quantizes[h] || fusions.residual[h].is_none()));
    }
}

//! Lowering of `Attention`: the window's K/V stored into the layer's cache (by the rope dispatch when it comes right before, else by `kv_store`), then block-masked attention over the cache: a workgroup per (group of the query heads that share a KV head, block of up to 4 rows of one sequence), all the heads where they fit its workgroup memory, reading each K/V tile once for all its (row, head) pairs. With `int8::Folds`, the kernels that write the output also quantize it for the output projection.

use super::{f, int8, Choice, Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Graph, Heads, Op};

/// The layer whose cache the `QkNormRope` at `rope` fills: the attention right after it over
/// the same rows and heads (the graph builder's order), else none.
pub(super) fn kv_stored_by_rope(graph: &Graph, rope: usize) -> Option<usize> {
    match (graph.ops.get(rope), graph.ops.get(rope + 1)) {
        (
            Some(Op::QkNormRope {
                qkv: a, heads: h1, ..
            }),
            Some(Op::Attention {
                qkv: b,
                heads: h2,
                layer,
                ..
            }),
        ) if a == b && (h1.q, h1.kv, h1.dim) == (h2.q, h2.kv, h2.dim) => Some(*layer),
        _ => None,
    }
}

fn attend(
    cx: &Context,
    index: usize,
    qkv: BufId,
    layer: usize,
    heads: Heads,
    o: BufId,
    out: &mut Vec<Pending>,
) {
    let kv_width = heads.kv * heads.dim;
    // Query heads per workgroup: all that share a KV head where they fit the kernel's
    // workgroup memory (PAIRS_MAX pairs, GQ_MAX query floats in attention.wgsl), else groups
    // of them; then as many rows (at most TILE_ROWS_MAX) as the pairs and queries allow.
    let per_kv = heads.q / heads.kv;
    let group_heads = per_kv.min(PAIRS_MAX).min(GQ_MAX / heads.dim).max(1);
    let tile_rows = (PAIRS_MAX / group_heads)
        .min(GQ_MAX / (group_heads * heads.dim))
        .clamp(1, TILE_ROWS_MAX);
    let split_rows = if cx.split_row_blocks { tile_rows } else { 1 };
    let params = [
        heads.dim as u32,
        heads.q as u32,
        heads.kv as u32,
        ((heads.q + 2 * heads.kv) * heads.dim) as u32,
        split_rows as u32,
        f(1.0 / (heads.dim as f32).sqrt()),
        group_heads as u32,
        tile_rows as u32,
    ];
    let stored = index > 0 && kv_stored_by_rope(cx.graph, index - 1).is_some();
    if !stored {
        out.push(Pending {
            kernel: Kernel::KvStore,
            format: None,
            buffers: vec![
                (1, cx.buffer_of(qkv)),
                (2, cx.kv.k[layer].clone()),
                (3, cx.kv.v[layer].clone()),
            ],
            params: (0, params),
            grid: Grid::Direct(
                Extent::Fixed((kv_width as u32).div_ceil(64)),
                Extent::Tokens(1),
            ),
            needs_out: false,
            small: None,
        });
    }
    let groups = heads.kv * per_kv.div_ceil(group_heads);
    // Split-KV for passes whose rows may see more than SPLIT_KEYS keys (`long_kv`):
    // `attention_split` over (head group, key range, block of rows) into the partials, then
    // `attention_combine` per (query head, row), which does nothing (an empty grid) in other
    // passes. A row of at most SPLIT_KEYS keys is one range, and one range combined is the row
    // blocks' result bit for bit (scaled by exp(0) = 1), so whether its pass splits does not
    // change it. Split ranges keep a long context's work spread over many workgroups (the row
    // blocks would be a handful for a short window), and each workgroup's loops short (llvmpipe
    // stops a shader invocation's loops after 65535 iterations in all). Without the partials
    // buffer (it would not fit a binding), every pass takes the row blocks.
    let parts = cx.attn_parts.cloned();
    let mut buffers = vec![
        (1, cx.buffer_of(qkv)),
        (4, cx.kv.k[layer].clone()),
        (5, cx.kv.v[layer].clone()),
        (6, cx.buffer_of(o)),
        (7, parts.clone().unwrap_or_else(|| cx.spare[0].clone())),
    ];
    // With `int8::Folds`, the kernels that write `o` (the row blocks, or the combine after
    // split-KV) also quantize it for the output projection.
    let quantizes = cx.folds.quantizes[index];
    if quantizes {
        buffers.push(int8::xq_out_binding(cx));
    }
    let (attention, combine) = output_kernels(quantizes);
    let split = parts.is_some().then(|| {
        (
            Choice::LongKv,
            vec![(
                0,
                Kernel::AttentionSplit,
                Grid::Direct(
                    Extent::Fixed((groups * SPLITS) as u32),
                    Extent::Blocks(split_rows as u32),
                ),
            )],
        )
    });
    out.push(Pending {
        kernel: attention,
        format: None,
        buffers: buffers.clone(),
        params: (0, params),
        grid: Grid::Direct(
            Extent::Fixed(groups as u32),
            Extent::Blocks(tile_rows as u32),
        ),
        needs_out: false,
        small: split,
    });
    if let Some(parts) = parts {
        let mut buffers = vec![(6, cx.buffer_of(o)), (7, parts)];
        if quantizes {
            buffers.push(int8::xq_out_binding(cx));
        }
        out.push(Pending {
            kernel: combine,
            format: None,
            buffers,
            params: (0, params),
            grid: Grid::Direct(Extent::Fixed(0), Extent::Fixed(0)),
            needs_out: false,
            small: Some((
                Choice::LongKv,
                vec![(
                    0,
                    combine,
                    Grid::Direct(Extent::Fixed(heads.q as u32), Extent::Tokens(1)),
                )],
            )),
        });
    }
}

/// Keys a row sees beyond which it is split into ranges (SPLIT_KEYS in attention.wgsl; each
/// range at least this long), and the most ranges (S_MAX).
pub const SPLIT_KEYS: usize = 512;
pub const SPLITS: usize = 8;

/// Bytes of the split-KV partials for a pass of `rows` rows: per (row, query head, range),
/// head_dim values, the max and the sum.
pub fn split_parts_bytes(graph: &Graph, rows: usize) -> u64 {
    let widest = graph
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Attention { heads, .. } => Some(heads.q * (heads.dim + 2)),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    (rows * widest * SPLITS * 4) as u64
}

/// (row, query head) pairs and query floats a workgroup of `attention` holds (PAIRS_MAX and
/// GQ_MAX in attention.wgsl), and the most rows it takes.
const PAIRS_MAX: usize = 16;
const GQ_MAX: usize = 2048;
const TILE_ROWS_MAX: usize = 4;

pub(super) fn lower(cx: &Context, index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::Attention {
            qkv,
            layer,
            heads,
            out: o,
        } => attend(cx, index, *qkv, *layer, *heads, *o, out),
        _ => unreachable!("not an attention op: {op:?}"),
    }
}

/// The kernels that write the output: (row blocks, split-KV combine), in the form that also
/// quantizes it (`int8::Folds`) or not.
fn output_kernels(quantizes: bool) -> (Kernel, Kernel) {
    if quantizes {
        (Kernel::AttentionQ, Kernel::AttentionCombineQ)
    } else {
        (Kernel::Attention, Kernel::AttentionCombine)
    }
}

pub(super) fn kernels(_op: &Op, needs: &mut Needs) {
    let (attention, combine) = output_kernels(needs.quantizes());
    needs.push(Kernel::KvStore, None);
    needs.push(attention, None);
    needs.push(Kernel::AttentionSplit, None);
    needs.push(combine, None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaders::{source, Family};

    /// The lowering sizes the workgroups with the kernel's own limits.
    #[test]
    fn the_limits_match_the_kernel() {
        let wgsl = source(Family::Attention);
        for (name, value) in [
            ("PAIRS_MAX", PAIRS_MAX),
            ("GQ_MAX", GQ_MAX),
            ("S_MAX", SPLITS),
            ("SPLIT_KEYS", SPLIT_KEYS),
        ] {
            let line = format!("const {name}: u32 = {value}u;\n");
            assert!(
                wgsl.contains(&line),
                "attention.wgsl lacks `{}`",
                line.trim()
            );
        }
    }
}

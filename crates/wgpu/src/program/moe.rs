//! Lowering of the MoE ops: routing (per token, or per routing block for LLaDA2.2), then the grouped experts: a group dispatch that buckets rows by expert and writes the indirect arguments, gate/up and down per dispatch (each reads up to `expert_parts` expert-stack bindings; tiles, or the matrix-vector form for passes of windows), and the weighted combine. A shared expert absorbed by the op (fuse.rs) is the stack's last expert, taken by every token, and added by the combine.

use super::{
    f, int8, Choice, Context, Extent, Grid, Needs, Pending, PLAN_HEAD, TILE_FEATURES, TILE_ROWS,
};
use crate::kernels::Kernel;
use crate::shaders::{EXPERT_MV_FEATURES, EXPERT_PART_BINDING};
use crate::weights::ExpertStacks;
use unmask_core::graph::{BufId, Op};

fn route(cx: &Context, index: usize, op: &Op, out: &mut Vec<Pending>) {
    let Op::MoeRoute {
        logits,
        bias,
        routing,
        ids,
        weights,
    } = op
    else {
        unreachable!("not a routing op: {op:?}")
    };
    let (logits, bias, ids, weights) = (*logits, *bias, *ids, *weights);
    let moe = cx.moe.expect("MoE scratch exists when the graph routes");
    let bias_buf = bias
        .map(|b| cx.vectors[b.0].clone().expect("uploaded bias"))
        .unwrap_or(cx.dummy.clone());
    // Block routing: one workgroup per routing block, else one per token.
    let (kernel, capacity, block_size, grid) = match routing.block {
        Some(b) => (
            Kernel::MoeRouteBlock,
            b.capacity as u32,
            b.size as u32,
            Extent::Blocks(b.size as u32),
        ),
        None => (Kernel::MoeRoute, 0, 0, Extent::Tokens(1)),
    };
    let mut buffers = vec![
        (2, bias_buf),
        (3, moe.scores.clone()),
        (4, cx.buffer_of(ids)),
        (5, cx.buffer_of(weights)),
    ];
    // With the router product absorbed: a workgroup per token computes the logits first.
    let (kernel, block_size, grid) = match cx.fusions.router[index] {
        Some(r) => {
            buffers.extend([
                (6, cx.buffer_of(r.x)),
                (
                    7,
                    cx.vectors[r.weight.0]
                        .clone()
                        .expect("router uploaded as f32"),
                ),
                (8, cx.buffer_of(logits)),
            ]);
            (
                Kernel::MoeRouteLogits,
                cx.cols(r.x) as u32,
                Extent::Tokens(1),
            )
        }
        None => {
            buffers.push((1, cx.buffer_of(logits)));
            (kernel, block_size, grid)
        }
    };
    out.push(Pending {
        kernel,
        format: None,
        buffers,
        params: (
            0,
            [
                routing.num_experts as u32,
                routing.top_k as u32,
                routing.n_group as u32,
                routing.topk_group as u32,
                f(routing.scaling),
                bias.is_some() as u32,
                capacity,
                block_size,
            ],
        ),
        grid: Grid::Direct(grid, Extent::Fixed(1)),
        needs_out: false,
        small: None,
    });
}

fn experts(
    cx: &Context,
    index: usize,
    x: BufId,
    ids: BufId,
    weights: BufId,
    o: BufId,
    out: &mut Vec<Pending>,
) {
    let moe = cx
        .moe
        .expect("MoE scratch exists when the graph has experts");
    let ex = cx.op_experts[index].as_ref().expect("uploaded experts");
    let top_k = cx.cols(ids);
    let dispatches = ex.dispatches();
    // The shared expert, when computed here, is the stack's last expert and its add's output
    // is what the combine writes (fuse.rs).
    let shared = cx.fusions.shared[index];
    let o = shared.map_or(o, |s| s.out);
    let shared = shared.is_some();
    let c = moe.max_dispatches as u32;
    let items_at = PLAN_HEAD as u32 * c;
    // x of each expert kernel's grid: the tiles' feature tiles, the matrix-vector kernels'
    // feature groups (moe_group writes both into their indirect arguments, packed in halves).
    // An extent past 65535 workgroups cannot be dispatched: a layer that wide keeps the tiles
    // for every pass (the matrix-vector form is then never chosen, so never packed).
    let (gu_mv, dn_mv) = EXPERT_MV_FEATURES;
    let (gu_tiles, dn_tiles) = (
        ex.inter.div_ceil(TILE_FEATURES),
        ex.hidden.div_ceil(2 * TILE_FEATURES),
    );
    let (gu_groups, dn_groups) = (ex.inter.div_ceil(gu_mv), ex.hidden.div_ceil(dn_mv));
    let matvec = matvec_fits(ex);
    let x_of = |tiles: usize, groups: usize| {
        (tiles.min(u16::MAX as usize) as u32) | if matvec { (groups as u32) << 16 } else { 0 }
    };
    let gate_up_x = x_of(gu_tiles, gu_groups);
    let down_x = x_of(dn_tiles, dn_groups);
    let int8 = matvec && int8::takes_experts(cx, ex);
    out.push(Pending {
        kernel: Kernel::MoeGroup,
        format: None,
        buffers: vec![
            (11, cx.buffer_of(ids)),
            (12, ex.bounds_buffer.clone()),
            (13, moe.counters.clone()),
            (14, moe.slots.clone()),
            (15, moe.plan.clone()),
        ],
        params: (
            10,
            [
                ex.experts as u32,
                top_k as u32,
                dispatches as u32,
                shared as u32,
                gate_up_x,
                down_x,
                items_at,
                moe.slot_cap as u32,
            ],
        ),
        grid: Grid::Direct(Extent::Fixed(1), Extent::Fixed(1)),
        needs_out: false,
        small: None,
    });
    // The group kernel writes args for `dispatches` dispatches: tiled gate/up at 3d, down at
    // 3(D + d), matrix-vector gate/up at 3(2D + d), down at 3(3D + d), where D is this layer's
    // dispatch count (the plan is read with this layer's layout). Each dispatch binds its
    // parts: the first as `w`, the others as `w_p`. A pass whose sequences have at most
    // TILE_ROWS rows takes the matrix-vector form (chosen, as for the dense products, by the
    // widest sequence, so that a sequence's rows take the kernel they take alone).
    // With `int8` the matrix-vector kernels take their integer form, each product's input
    // quantized first: the tokens' rows for gate/up, every slot's row (a token's `per`) of the
    // activations for down.
    let choice = Choice::Rows(Extent::Tokens(1));
    let per = top_k + shared as usize;
    // The gate/up product's input may arrive quantized (`int8::Folds`); the down product's
    // is the gate/up output.
    for (kernel, mv, stacks, x_in, y_out, params, args_at, quantize_per, prequantized) in [
        (
            Kernel::MoeGateUp,
            Kernel::MoeGateUpMv,
            &ex.gate_up,
            cx.buffer_of(x),
            moe.act.clone(),
            [ex.hidden, ex.gate_up_stride, ex.inter, 2 * ex.inter],
            0,
            1,
            cx.folds.prequantized[index],
        ),
        (
            Kernel::MoeDown,
            Kernel::MoeDownMv,
            &ex.down,
            moe.act.clone(),
            moe.y.clone(),
            [ex.inter, ex.down_stride, ex.hidden, ex.hidden],
            dispatches,
            per,
            false,
        ),
    ] {
        if int8 && !prequantized {
            out.push(int8::quantize(
                cx,
                ex.format,
                x_in.clone(),
                params[0],
                quantize_per,
                Extent::Tokens(1),
                choice,
                TILE_ROWS,
            ));
        }
        let mv = if int8 { int8::int_kernel(mv) } else { mv };
        for d in 0..dispatches {
            let parts = ex.parts_of(d);
            let mut buffers = vec![
                (1, stacks[parts.start].clone()),
                (2, x_in.clone()),
                (3, y_out.clone()),
                (5, moe.plan.clone()),
                (6, moe.slots.clone()),
            ];
            // Every extra part binding of the layout is bound; past this dispatch's parts,
            // to its first part (never read: its experts are not in this dispatch).
            for p in 1..cx.expert_parts {
                let part = if parts.start + p < parts.end {
                    parts.start + p
                } else {
                    parts.start
                };
                buffers.push((EXPERT_PART_BINDING + p as u32, stacks[part].clone()));
            }
            if int8 {
                buffers.push(int8::xq_binding(cx));
            }
            out.push(Pending {
                kernel,
                format: Some(ex.format),
                buffers,
                params: (
                    4,
                    [
                        params[0] as u32,
                        params[1] as u32,
                        params[2] as u32,
                        params[3] as u32,
                        ex.first_expert(d),
                        12 * dispatches as u32 + d as u32,
                        items_at,
                        ex.per_part as u32,
                    ],
                ),
                grid: Grid::Indirect((12 * (args_at + d)) as u64),
                needs_out: false,
                small: matvec.then(|| {
                    (
                        choice,
                        vec![(
                            TILE_ROWS,
                            mv,
                            Grid::Indirect((12 * (2 * dispatches + args_at + d)) as u64),
                        )],
                    )
                }),
            });
        }
    }
    // The combine: a workgroup per token; with an absorbed residual op it writes that op's sum
    // (and norm) instead of the block output.
    let residual = cx.fusions.residual[index];
    let (o, mode) = match residual {
        Some(r) => (r.sum, if r.norm.is_some() { 2 } else { 1 }),
        None => (o, 0),
    };
    let o = cx.buffer_of(o);
    let mut buffers = vec![
        (11, cx.buffer_of(ids)),
        (21, cx.buffer_of(weights)),
        (22, moe.slots.clone()),
        (23, moe.y.clone()),
        (24, o),
    ];
    let mut eps = 0.0;
    if let Some(r) = residual {
        let (norm_w, normed) = match r.norm {
            Some((w, e, normed)) => {
                eps = e;
                (
                    cx.vectors[w.0].clone().expect("uploaded vector"),
                    cx.buffer_of(normed),
                )
            }
            // Unused: the read-only one to the dummy, the writable one to a spare.
            None => (cx.dummy.clone(), cx.spare[0].clone()),
        };
        buffers.extend([(25, cx.buffer_of(r.skip)), (26, norm_w), (27, normed)]);
    }
    // With `int8::Folds`, the combine also quantizes the norm for the next product.
    let quantizes = cx.folds.quantizes[index];
    if quantizes {
        buffers.push(int8::xq_out_binding(cx));
    }
    out.push(Pending {
        kernel: combine_kernel(residual.is_some(), quantizes),
        format: None,
        buffers,
        params: (
            20,
            [
                ex.hidden as u32,
                top_k as u32,
                moe.slot_cap as u32,
                shared as u32,
                mode,
                f(eps),
                0,
                0,
            ],
        ),
        grid: Grid::Direct(Extent::Fixed(1), Extent::Tokens(1)),
        needs_out: false,
        small: None,
    });
}

/// Whether the experts' matrix-vector grids can be dispatched (at most 65535 feature groups).
pub(super) fn matvec_fits(ex: &ExpertStacks) -> bool {
    let (gu_mv, dn_mv) = EXPERT_MV_FEATURES;
    let fits = |v: usize| v <= u16::MAX as usize;
    fits(ex.inter.div_ceil(gu_mv)) && fits(ex.hidden.div_ceil(dn_mv))
}

/// The combine: plain, with the residual (and norm), or also quantizing that norm.
fn combine_kernel(residual: bool, quantizes: bool) -> Kernel {
    match (residual, quantizes) {
        (false, _) => Kernel::MoeCombine,
        (true, false) => Kernel::MoeCombineResidual,
        (true, true) => Kernel::MoeCombineResidualQ,
    }
}

pub(super) fn lower(cx: &Context, index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::MoeRoute { .. } => route(cx, index, op, out),
        Op::MoeExperts {
            x,
            ids,
            weights,
            out: o,
            ..
        } => experts(cx, index, *x, *ids, *weights, *o, out),
        _ => unreachable!("not a MoE op: {op:?}"),
    }
}

pub(super) fn kernels(op: &Op, needs: &mut Needs) {
    match op {
        Op::MoeRoute { routing, .. } if routing.block.is_some() => {
            needs.push(Kernel::MoeRouteBlock, None)
        }
        Op::MoeRoute { .. } if needs.fusions.router[needs.index].is_some() => {
            needs.push(Kernel::MoeRouteLogits, None)
        }
        Op::MoeRoute { .. } => needs.push(Kernel::MoeRoute, None),
        Op::MoeExperts { .. } => {
            let format = needs.experts_format();
            needs.push(Kernel::MoeGroup, None);
            needs.push(Kernel::MoeGateUp, format);
            needs.push(Kernel::MoeDown, format);
            needs.push(Kernel::MoeGateUpMv, format);
            needs.push(Kernel::MoeDownMv, format);
            if needs.int8 && needs.experts_int8() {
                // The down product's input at least is quantized by a dispatch.
                needs.push(Kernel::QuantizeRows, format);
                needs.push(Kernel::MoeGateUpMvQ, format);
                needs.push(Kernel::MoeDownMvQ, format);
            }
            let residual = needs.fusions.residual[needs.index].is_some();
            needs.push(combine_kernel(residual, needs.quantizes()), None);
        }
        _ => {}
    }
}

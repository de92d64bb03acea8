//! Recording of the MoE ops: routing (per token, or per routing block of each sequence for
//! LLaDA2.2), then the grouped experts over every row of the pass: bucket rows by expert, gate/up
//! and down per active expert (each read once for all sequences), the weighted combine.

use super::*;

fn route(
    rec: &Rec,
    logits: &BufId,
    bias: &Option<WeightId>,
    r: &Routing,
    ids: &BufId,
    weights: &BufId,
    ls: &mut Vec<Launch>,
) -> Result<()> {
    let b = rec.b;
    let n = rec.n;
    let bias = match bias {
        Some(w) => b.weights.vector(*w)?.0,
        None => 0,
    };
    match r.block {
        // Rows of routing block b are rows b * size.. of a sequence's step: the backend
        // checks that a step starts on a routing block boundary, and each sequence of the
        // pass is routed on its own rows.
        Some(blk) => {
            for s in rec.seqs {
                let mut l = launch(
                    "moe_route_block",
                    (s.rows.div_ceil(blk.size).max(1) as u32, 1, 1),
                    ROUTE_BLOCK_THREADS,
                    vec![
                        rec.seq_ptr(*logits, s),
                        Arg::Ptr(bias),
                        rec.seq_ptr(*ids, s),
                        rec.seq_ptr(*weights, s),
                        u(s.rows),
                        u(r.num_experts),
                        u(r.top_k),
                        u(blk.size),
                        u(blk.capacity),
                        Arg::F32(r.scaling),
                    ],
                );
                l.shared_bytes = route_block_shared_bytes(r.num_experts) as u32;
                ls.push(l);
            }
        }
        None => {
            let mut l = launch(
                "moe_route",
                (n as u32, 1, 1),
                32,
                vec![
                    rec.ptr(*logits),
                    Arg::Ptr(bias),
                    rec.ptr(*ids),
                    rec.ptr(*weights),
                    u(r.num_experts),
                    u(r.top_k),
                    u(r.n_group),
                    u(r.topk_group),
                    Arg::F32(r.scaling),
                ],
            );
            l.shared_bytes = route_shared_bytes(r.num_experts, r.n_group) as u32;
            ls.push(l);
        }
    }
    Ok(())
}

fn experts(
    rec: &Rec,
    x: &BufId,
    ids: &BufId,
    weights: &BufId,
    o: &BufId,
    oi: usize,
    ls: &mut Vec<Launch>,
) -> Result<()> {
    let b = rec.b;
    let g = rec.b.graph;
    let n = rec.n;
    let st =
        b.weights.stacks.get(&oi).ok_or_else(|| {
            cuda_error(format!("op {oi}: MoE experts were not uploaded as a stack"))
        })?;
    let top_k = g.buffer(*ids).cols;
    let pairs = n * top_k;
    let e = st.count;
    let m = &b.moe;
    let mut bucket = launch(
        "moe_group",
        (1, 1, 1),
        (e.div_ceil(32) * 32).min(MAX_EXPERTS) as u32,
        vec![
            rec.ptr(*ids),
            u(pairs),
            u(e),
            Arg::Ptr(m.offsets),
            Arg::Ptr(m.active),
            Arg::Ptr(m.num_active),
            Arg::Ptr(m.pairs),
        ],
    );
    bucket.shared_bytes = (e * 4) as u32;
    ls.push(bucket);
    // One grid row per possibly active expert; surplus rows return at once.
    let slots = e.min(pairs) as u32;
    ls.push(launch(
        format!("moe_gate_up_{}", st.gate_up_format.suffix()),
        (st.inter.div_ceil(GATE_UP_BLOCK_ROWS) as u32, slots, 1),
        MM_THREADS,
        vec![
            rec.ptr(*x),
            Arg::Ptr(st.gate),
            Arg::Ptr(st.up),
            Arg::U64(st.gate_up_stride),
            Arg::Ptr(m.offsets),
            Arg::Ptr(m.active),
            Arg::Ptr(m.num_active),
            Arg::Ptr(m.pairs),
            Arg::Ptr(m.act),
            u(top_k),
            u(st.hidden),
            u(st.inter),
        ],
    ));
    ls.push(launch(
        format!("moe_down_{}", st.down_format.suffix()),
        (st.hidden.div_ceil(MM_BLOCK_ROWS) as u32, slots, 1),
        MM_THREADS,
        vec![
            Arg::Ptr(m.act),
            Arg::Ptr(st.down),
            Arg::U64(st.down_stride),
            Arg::Ptr(m.offsets),
            Arg::Ptr(m.active),
            Arg::Ptr(m.num_active),
            Arg::Ptr(m.pairs),
            Arg::Ptr(m.ys),
            u(st.inter),
            u(st.hidden),
        ],
    ));
    ls.push(launch(
        "moe_combine",
        (st.hidden.div_ceil(EW as usize) as u32, n as u32, 1),
        EW,
        vec![
            Arg::Ptr(m.ys),
            rec.ptr(*ids),
            rec.ptr(*weights),
            rec.ptr(*o),
            u(top_k),
            u(st.hidden),
        ],
    ));
    Ok(())
}

pub(super) fn record(rec: &Rec, oi: usize, op: &Op, ls: &mut Vec<Launch>) -> Result<()> {
    match op {
        Op::MoeRoute {
            logits,
            bias,
            routing,
            ids,
            weights,
        } => route(rec, logits, bias, routing, ids, weights, ls),
        Op::MoeExperts {
            x,
            ids,
            weights,
            out: o,
            ..
        } => experts(rec, x, ids, weights, o, oi, ls),
        _ => unreachable!("not a MoE op: {op:?}"),
    }
}

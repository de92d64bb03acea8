//! Lowering of `QkNormRope`: per-head norms and NeoX RoPE in place, one workgroup per (q or k head, row); when the attention over the same rows comes next, the same dispatch stores the window's K and V into that layer's cache (and the attention skips its store pass).

use super::attention::kv_stored_by_rope;
use super::{f, Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::Op;

pub(super) fn lower(cx: &Context, index: usize, op: &Op, out: &mut Vec<Pending>) {
    let Op::QkNormRope {
        qkv,
        q_norm,
        k_norm,
        heads,
        rot_dim,
        theta,
        eps,
    } = *op
    else {
        unreachable!("not a rope op: {op:?}")
    };
    let (has_q_norm, has_k_norm) = (q_norm.is_some(), k_norm.is_some());
    let table = &cx.kv.tables[cx.kv.table_index(rot_dim, theta)];
    let norms = cx.op_norms[index].clone().unwrap_or(cx.dummy.clone());
    let store = kv_stored_by_rope(cx.graph, index);
    let (k_cache, v_cache) = match store {
        Some(layer) => (cx.kv.k[layer].clone(), cx.kv.v[layer].clone()),
        None => (cx.spare[0].clone(), cx.spare[1].clone()),
    };
    let flags = has_q_norm as u32 | (has_k_norm as u32) << 1 | (store.is_some() as u32) << 2;
    let v_heads = if store.is_some() { heads.kv } else { 0 };
    out.push(Pending {
        kernel: Kernel::QkNormRope,
        format: None,
        buffers: vec![
            (1, cx.buffer_of(qkv)),
            (2, norms),
            (
                3,
                table.buffer.clone().expect("table sized before compiling"),
            ),
            (4, k_cache),
            (5, v_cache),
        ],
        params: (
            0,
            [
                heads.dim as u32,
                heads.q as u32,
                heads.kv as u32,
                (rot_dim / 2) as u32,
                ((heads.q + 2 * heads.kv) * heads.dim) as u32,
                f(eps),
                flags,
                0,
            ],
        ),
        grid: Grid::Direct(
            Extent::Fixed((heads.q + heads.kv + v_heads) as u32),
            Extent::of(cx.rows(qkv), 1),
        ),
        needs_out: false,
        small: None,
    });
}

pub(super) fn kernels(_op: &Op, needs: &mut Needs) {
    needs.push(Kernel::QkNormRope, None);
}

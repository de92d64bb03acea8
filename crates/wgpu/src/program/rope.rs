//! Lowering of `QkNormRope`: per-head norms and NeoX RoPE in place, one workgroup per (q or k head, row).

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
                has_q_norm as u32,
                has_k_norm as u32,
            ],
        ),
        grid: Grid::Direct(
            Extent::Fixed((heads.q + heads.kv) as u32),
            Extent::of(cx.rows(qkv), 1),
        ),
        needs_out: false,
        narrow: None,
    });
}

pub(super) fn kernels(_op: &Op, needs: &mut Needs) {
    needs.push(Kernel::QkNormRope, None);
}

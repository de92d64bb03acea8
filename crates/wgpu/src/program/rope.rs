//! Lowering of `QkNormRope`: per-head norms and NeoX RoPE in place, one workgroup per (q or k head, row).

use super::{f, Context, Extent, Grid, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Heads};

pub(super) struct Rope {
    pub qkv: BufId,
    pub has_q_norm: bool,
    pub has_k_norm: bool,
    pub heads: Heads,
    pub rot_dim: usize,
    pub theta: f32,
    pub eps: f32,
}

pub(super) fn lower(cx: &Context, index: usize, r: Rope, out: &mut Vec<Pending>) {
    let Rope {
        qkv,
        has_q_norm,
        has_k_norm,
        heads,
        rot_dim,
        theta,
        eps,
    } = r;
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

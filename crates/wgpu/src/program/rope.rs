//! Lowering of `QkNormRope`: per-head norms and NeoX RoPE in place, one workgroup per (q or k head, row).

use super::{f, Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Heads, Op};

struct Rope {
    pub qkv: BufId,
    pub has_q_norm: bool,
    pub has_k_norm: bool,
    pub heads: Heads,
    pub rot_dim: usize,
    pub theta: f32,
    pub eps: f32,
}

fn norm_rope(cx: &Context, index: usize, r: Rope, out: &mut Vec<Pending>) {
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

pub(super) fn lower(cx: &Context, index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::QkNormRope {
            qkv,
            q_norm,
            k_norm,
            heads,
            rot_dim,
            theta,
            eps,
        } => norm_rope(
            cx,
            index,
            Rope {
                qkv: *qkv,
                has_q_norm: q_norm.is_some(),
                has_k_norm: k_norm.is_some(),
                heads: *heads,
                rot_dim: *rot_dim,
                theta: *theta,
                eps: *eps,
            },
            out,
        ),
        _ => unreachable!("not a rope op: {op:?}"),
    }
}

pub(super) fn kernels(_op: &Op, needs: &mut Needs) {
    needs.push(Kernel::QkNormRope, None);
}

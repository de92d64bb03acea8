//! Lowering of `Attention`: the window's K/V stored into the layer's cache, then block-masked attention over the cache.

use super::{f, Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Heads, Op};

fn attend(cx: &Context, qkv: BufId, layer: usize, heads: Heads, o: BufId, out: &mut Vec<Pending>) {
    let kv_width = heads.kv * heads.dim;
    let params = [
        heads.dim as u32,
        heads.q as u32,
        heads.kv as u32,
        ((heads.q + 2 * heads.kv) * heads.dim) as u32,
        kv_width as u32,
        f(1.0 / (heads.dim as f32).sqrt()),
        0,
        0,
    ];
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
        narrow: None,
    });
    out.push(Pending {
        kernel: Kernel::Attention,
        format: None,
        buffers: vec![
            (1, cx.buffer_of(qkv)),
            (4, cx.kv.k[layer].clone()),
            (5, cx.kv.v[layer].clone()),
            (6, cx.buffer_of(o)),
        ],
        params: (0, params),
        grid: Grid::Direct(Extent::Fixed(heads.q as u32), Extent::Tokens(1)),
        needs_out: false,
        narrow: None,
    });
}

pub(super) fn lower(cx: &Context, _index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::Attention {
            qkv,
            layer,
            heads,
            out: o,
        } => attend(cx, *qkv, *layer, *heads, *o, out),
        _ => unreachable!("not an attention op: {op:?}"),
    }
}

pub(super) fn kernels(_op: &Op, needs: &mut Needs) {
    needs.push(Kernel::KvStore, None);
    needs.push(Kernel::Attention, None);
}

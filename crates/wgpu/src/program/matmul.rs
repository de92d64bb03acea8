//! Lowering of `MatMul`: a tiled dispatch per part of the (possibly split) matrix, with the narrow variant for windows of at most `NARROW_ROWS` rows.

use super::{Context, Extent, Grid, Needs, Pending, TILE_FEATURES, TILE_ROWS};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Op, Rows, WeightId};

fn product(cx: &Context, x: BufId, weight: WeightId, o: BufId, out: &mut Vec<Pending>) {
    let m = cx.matrices[weight.0].as_ref().expect("uploaded matrix");
    let from_out = cx.rows(x) == Rows::Out;
    for part in &m.parts {
        out.push(Pending {
            kernel: Kernel::Matmul,
            format: Some(m.format),
            buffers: vec![
                (1, part.buffer.clone()),
                (2, cx.buffer_of(x)),
                (3, cx.buffer_of(o)),
            ],
            params: (
                0,
                [
                    m.cols as u32,
                    m.stride as u32,
                    part.rows.len() as u32,
                    m.rows as u32,
                    part.rows.start as u32,
                    from_out as u32,
                    0,
                    0,
                ],
            ),
            grid: Grid::Direct(
                Extent::Fixed(part.rows.len().div_ceil(TILE_FEATURES) as u32),
                Extent::of(cx.rows(x), TILE_ROWS),
            ),
            needs_out: from_out,
            narrow: Some((
                Grid::Direct(
                    Extent::Fixed(part.rows.len().div_ceil(2 * TILE_FEATURES) as u32),
                    Extent::Fixed(1),
                ),
                Extent::of(cx.rows(x), 1),
            )),
        });
    }
}

pub(super) fn lower(cx: &Context, _index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::MatMul { x, weight, out: o } => product(cx, *x, *weight, *o, out),
        _ => unreachable!("not a matrix op: {op:?}"),
    }
}

pub(super) fn kernels(op: &Op, needs: &mut Needs) {
    if let Op::MatMul { weight, .. } = op {
        let format = needs.matrix_format(*weight);
        needs.push(Kernel::Matmul, format);
        needs.push(Kernel::MatmulNarrow, format);
    }
}

//! Lowering of `MatMul`: a tiled dispatch per part of the (possibly split) matrix, with the narrow variant for windows of at most `NARROW_ROWS` rows.

use super::{Context, Extent, Grid, Pending, TILE_FEATURES, TILE_ROWS};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Rows, WeightId};

pub(super) fn lower(cx: &Context, x: BufId, weight: WeightId, o: BufId, out: &mut Vec<Pending>) {
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

//! Lowering of the row-wise ops: `Add`, `SwiGlu` (two inputs, one output) and `TakeLastRows`.

use super::{Context, Extent, Grid, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Rows};

/// `Add` or `SwiGlu` (`kernel`): `o = kernel(a, b)` column by column.
pub(super) fn lower_binary(
    cx: &Context,
    kernel: Kernel,
    a: BufId,
    b: BufId,
    o: BufId,
    out: &mut Vec<Pending>,
) {
    let cols = cx.cols(o);
    out.push(Pending {
        kernel,
        format: None,
        buffers: vec![
            (1, cx.buffer_of(a)),
            (2, cx.buffer_of(b)),
            (3, cx.buffer_of(o)),
        ],
        params: (0, [cols as u32, 0, 0, 0, 0, 0, 0, 0]),
        grid: Grid::Direct(
            Extent::Fixed((cols as u32).div_ceil(256)),
            Extent::of(cx.rows(o), 1),
        ),
        needs_out: cx.rows(o) == Rows::Out,
        narrow: None,
    });
}

pub(super) fn lower_take_last_rows(cx: &Context, x: BufId, o: BufId, out: &mut Vec<Pending>) {
    let cols = cx.cols(o);
    out.push(Pending {
        kernel: Kernel::TakeLastRows,
        format: None,
        buffers: vec![(1, cx.buffer_of(x)), (3, cx.buffer_of(o))],
        params: (0, [cols as u32, 0, 0, 0, 0, 0, 0, 0]),
        grid: Grid::Direct(Extent::Fixed((cols as u32).div_ceil(256)), Extent::Out(1)),
        needs_out: true,
        narrow: None,
    });
}

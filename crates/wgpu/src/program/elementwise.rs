//! Lowering of the row-wise ops: `Add`, `SwiGlu` (two inputs, one output) and `TakeLastRows`.

use super::{Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Op, Rows};

/// `Add` or `SwiGlu` (`kernel`): `o = kernel(a, b)` column by column.
fn binary(cx: &Context, kernel: Kernel, a: BufId, b: BufId, o: BufId, out: &mut Vec<Pending>) {
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
        small: None,
    });
}

fn take_last_rows(cx: &Context, x: BufId, o: BufId, out: &mut Vec<Pending>) {
    let cols = cx.cols(o);
    out.push(Pending {
        kernel: Kernel::TakeLastRows,
        format: None,
        buffers: vec![(1, cx.buffer_of(x)), (3, cx.buffer_of(o))],
        params: (0, [cols as u32, 0, 0, 0, 0, 0, 0, 0]),
        grid: Grid::Direct(Extent::Fixed((cols as u32).div_ceil(256)), Extent::Out(1)),
        needs_out: true,
        small: None,
    });
}

pub(super) fn lower(cx: &Context, _index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::Add { a, b, out: o } => binary(cx, Kernel::Add, *a, *b, *o, out),
        Op::SwiGlu { gate, up, out: o } => binary(cx, Kernel::SwiGlu, *gate, *up, *o, out),
        Op::TakeLastRows { x, out: o } => take_last_rows(cx, *x, *o, out),
        _ => unreachable!("not an elementwise op: {op:?}"),
    }
}

pub(super) fn kernels(op: &Op, needs: &mut Needs) {
    match op {
        Op::Add { .. } => needs.push(Kernel::Add, None),
        Op::SwiGlu { .. } => needs.push(Kernel::SwiGlu, None),
        Op::TakeLastRows { .. } => needs.push(Kernel::TakeLastRows, None),
        _ => {}
    }
}

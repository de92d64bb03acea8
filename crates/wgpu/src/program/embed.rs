//! Lowering of `Embed`: one gather dispatch per part of the (possibly split) table.

use super::{Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Op, WeightId};

fn gather(cx: &Context, ids: BufId, table: WeightId, o: BufId, out: &mut Vec<Pending>) {
    let m = cx.matrices[table.0].as_ref().expect("uploaded table");
    for part in &m.parts {
        out.push(Pending {
            kernel: Kernel::Embed,
            format: Some(m.format),
            buffers: vec![
                (1, part.buffer.clone()),
                (2, cx.buffer_of(ids)),
                (3, cx.buffer_of(o)),
            ],
            params: (
                0,
                [
                    m.cols as u32,
                    m.stride as u32,
                    part.rows.start as u32,
                    part.rows.len() as u32,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
            grid: Grid::Direct(
                Extent::Fixed((m.cols.div_ceil(4) as u32).div_ceil(64)),
                Extent::Tokens(1),
            ),
            needs_out: false,
            small: None,
        });
    }
}

pub(super) fn lower(cx: &Context, _index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::Embed { ids, table, out: o } => gather(cx, *ids, *table, *o, out),
        _ => unreachable!("not an embedding op: {op:?}"),
    }
}

pub(super) fn kernels(op: &Op, needs: &mut Needs) {
    if let Op::Embed { table, .. } = op {
        needs.push(Kernel::Embed, needs.matrix_format(*table));
    }
}

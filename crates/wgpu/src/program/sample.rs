//! Lowering of `Sample`: one workgroup per predicted row (the greedy pipeline, swapped for the seeded one when a step samples with a temperature).

use super::{Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Op};

fn sample(cx: &Context, logits: BufId, o: BufId, out: &mut Vec<Pending>) {
    let vocab = cx.cols(logits);
    out.push(Pending {
        kernel: Kernel::Sample,
        format: None,
        buffers: vec![(1, cx.buffer_of(logits)), (2, cx.buffer_of(o))],
        params: (0, [vocab as u32, 0, 0, 0, 0, 0, 0, 0]),
        grid: Grid::Direct(Extent::Out(1), Extent::Fixed(1)),
        needs_out: true,
        small: None,
    });
}

pub(super) fn lower(cx: &Context, _index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::Sample { logits, out: o } => sample(cx, *logits, *o, out),
        _ => unreachable!("not a sampling op: {op:?}"),
    }
}

pub(super) fn kernels(_op: &Op, needs: &mut Needs) {
    needs.push(Kernel::Sample, None);
    needs.push(Kernel::SampleSeeded, None);
}

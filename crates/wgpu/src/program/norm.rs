//! Lowering of `RmsNorm` and `AddRmsNorm`: one workgroup per (group of columns, row).

use super::{f, Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Op, Rows, WeightId};

/// The norm of `x` (or, with `add = Some((b, sum))`, of `sum = x + b`) into `o`.
fn rms_norm(
    cx: &Context,
    x: BufId,
    add: Option<(BufId, BufId)>,
    weight: WeightId,
    o: BufId,
    eps: f32,
    out: &mut Vec<Pending>,
) {
    let g = cx.graph;
    let d = g.weight(weight).shape.iter().product::<usize>();
    let groups = cx.cols(x) / d;
    let mut buffers = vec![
        (1, cx.buffer_of(x)),
        (2, cx.vectors[weight.0].clone().expect("uploaded vector")),
        (3, cx.buffer_of(o)),
    ];
    if let Some((b, sum)) = add {
        buffers.extend([(4, cx.buffer_of(b)), (5, cx.buffer_of(sum))]);
    }
    out.push(Pending {
        kernel: if add.is_some() {
            Kernel::AddRmsNorm
        } else {
            Kernel::RmsNorm
        },
        format: None,
        buffers,
        params: (0, [d as u32, groups as u32, f(eps), 0, 0, 0, 0, 0]),
        grid: Grid::Direct(Extent::Fixed(groups as u32), Extent::of(cx.rows(x), 1)),
        needs_out: cx.rows(x) == Rows::Out,
        small: None,
    });
}

pub(super) fn lower(cx: &Context, _index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::RmsNorm {
            x,
            weight,
            out: o,
            eps,
        } => rms_norm(cx, *x, None, *weight, *o, *eps, out),
        Op::AddRmsNorm {
            a,
            b,
            weight,
            sum,
            out: o,
            eps,
        } => rms_norm(cx, *a, Some((*b, *sum)), *weight, *o, *eps, out),
        _ => unreachable!("not a norm op: {op:?}"),
    }
}

pub(super) fn kernels(op: &Op, needs: &mut Needs) {
    match op {
        Op::AddRmsNorm { .. } => needs.push(Kernel::AddRmsNorm, None),
        _ => needs.push(Kernel::RmsNorm, None),
    }
}

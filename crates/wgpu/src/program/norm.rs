//! Lowering of `RmsNorm` and `AddRmsNorm`: one workgroup per (group of columns, row); with
//! `int8::Folds`, the kernel that also quantizes the rows for the product after it.

use super::{f, int8, Context, Extent, Grid, Needs, Pending};
use crate::kernels::Kernel;
use unmask_core::graph::{BufId, Op, Rows, WeightId};

/// The norm of `x` (or, with `add = Some((b, sum))`, of `sum = x + b`) into `o`.
#[allow(clippy::too_many_arguments)]
fn rms_norm(
    cx: &Context,
    index: usize,
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
    let quantizes = cx.folds.quantizes[index];
    if quantizes {
        buffers.push(int8::xq_out_binding(cx));
    }
    out.push(Pending {
        kernel: kernel(add.is_some(), quantizes),
        format: None,
        buffers,
        params: (0, [d as u32, groups as u32, f(eps), 0, 0, 0, 0, 0]),
        grid: Grid::Direct(Extent::Fixed(groups as u32), Extent::of(cx.rows(x), 1)),
        needs_out: cx.rows(x) == Rows::Out,
        small: None,
    });
}

/// The norm's kernel, with the add or not, and in the form that also quantizes its rows for
/// the product after it (`int8::Folds`) or not.
fn kernel(add: bool, quantizes: bool) -> Kernel {
    match (add, quantizes) {
        (false, false) => Kernel::RmsNorm,
        (true, false) => Kernel::AddRmsNorm,
        (false, true) => Kernel::RmsNormQ,
        (true, true) => Kernel::AddRmsNormQ,
    }
}

pub(super) fn lower(cx: &Context, index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::RmsNorm {
            x,
            weight,
            out: o,
            eps,
        } => rms_norm(cx, index, *x, None, *weight, *o, *eps, out),
        Op::AddRmsNorm {
            a,
            b,
            weight,
            sum,
            out: o,
            eps,
        } => rms_norm(cx, index, *a, Some((*b, *sum)), *weight, *o, *eps, out),
        _ => unreachable!("not a norm op: {op:?}"),
    }
}

pub(super) fn kernels(op: &Op, needs: &mut Needs) {
    let add = matches!(op, Op::AddRmsNorm { .. });
    needs.push(kernel(add, needs.quantizes()), None);
}

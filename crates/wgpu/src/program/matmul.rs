//! Lowering of `MatMul`: a tiled dispatch per part of the (possibly split) matrix, with the matrix-vector kernels for windows of at most 8 and 32 rows.

use super::{int8, Choice, Context, Extent, Grid, Needs, Pending, TILE_FEATURES, TILE_ROWS};
use crate::kernels::Kernel;
use crate::shaders::matvec_shape;

/// The matrix-vector kernels, fewest rows first: a product takes the first that fits.
const MATVEC_KERNELS: [Kernel; 2] = [Kernel::Matvec8, Kernel::Matvec32];
use unmask_core::graph::{BufId, Op, Rows, WeightId};

/// `groups` workgroups as a grid whose x stays within every adapter's per-dimension limit
/// (the kernels number their groups y * x_count + x).
fn matvec_grid(groups: usize) -> Grid {
    let x = groups.clamp(1, MAX_GRID_X);
    Grid::Direct(
        Extent::Fixed(x as u32),
        Extent::Fixed(groups.div_ceil(x) as u32),
    )
}

/// At most this many workgroups in x (WebGPU guarantees 65535).
const MAX_GRID_X: usize = 32768;

fn product(
    cx: &Context,
    index: usize,
    x: BufId,
    weight: WeightId,
    o: BufId,
    out: &mut Vec<Pending>,
) {
    let m = cx.matrices[weight.0].as_ref().expect("uploaded matrix");
    let from_out = cx.rows(x) == Rows::Out;
    let choice = Choice::Rows(Extent::of(cx.rows(x), 1));
    let int8 = int8::takes(cx, m.format, m.cols);
    if int8 && !cx.folds.prequantized[index] {
        // Once for every part of the matrix (unless the kernel writing `x` does it).
        let max_rows = matvec_shape(MATVEC_KERNELS[MATVEC_KERNELS.len() - 1].entry()).0;
        out.push(int8::quantize(
            cx,
            m.format,
            cx.buffer_of(x),
            m.cols,
            1,
            Extent::of(cx.rows(x), 1),
            choice,
            max_rows,
        ));
    }
    for part in &m.parts {
        let mut buffers = vec![
            (1, part.buffer.clone()),
            (2, cx.buffer_of(x)),
            (3, cx.buffer_of(o)),
        ];
        if int8 {
            buffers.push(int8::xq_binding(cx));
        }
        out.push(Pending {
            kernel: Kernel::Matmul,
            format: Some(m.format),
            buffers,
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
            small: Some((
                choice,
                MATVEC_KERNELS
                    .into_iter()
                    .map(|kernel| {
                        let (rows, feats) = matvec_shape(kernel.entry());
                        let kernel = if int8 {
                            int8::int_kernel(kernel)
                        } else {
                            kernel
                        };
                        (rows, kernel, matvec_grid(part.rows.len().div_ceil(feats)))
                    })
                    .collect(),
            )),
        });
    }
}

pub(super) fn lower(cx: &Context, index: usize, op: &Op, out: &mut Vec<Pending>) {
    match op {
        Op::MatMul { x, weight, out: o } => product(cx, index, *x, *weight, *o, out),
        _ => unreachable!("not a matrix op: {op:?}"),
    }
}

pub(super) fn kernels(op: &Op, needs: &mut Needs) {
    if let Op::MatMul { weight, .. } = op {
        let format = needs.matrix_format(*weight);
        needs.push(Kernel::Matmul, format);
        let int8 = needs.int8 && needs.matrix_int8(*weight);
        for kernel in MATVEC_KERNELS {
            needs.push(kernel, format);
            if int8 {
                needs.push(int8::int_kernel(kernel), format);
            }
        }
        if int8 && !needs.prequantized() {
            needs.push(Kernel::QuantizeRows, format);
        }
    }
}

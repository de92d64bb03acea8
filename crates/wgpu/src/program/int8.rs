//! `WgpuOptions::int8_dots`: the matrix-vector kernels' integer form for q8_0 / q4 matrices
//! and experts (shaders/matvec/int8.wgsl). Before such a product a `quantize_rows` dispatch
//! writes its activation rows, 8 bits per column and a scale per block of 32, into the shared
//! `xq` buffer; the product's matrix-vector variants read them there. The tiled kernels (passes
//! with a sequence of more than 32 rows) keep the f32 activations, so the quantize dispatch runs
//! only when a matrix-vector variant does.

use super::{Choice, Context, Extent, Grid, Pending};
use crate::format::WeightFormat;
use crate::kernels::Kernel;
use crate::shaders::has_int_form;
use crate::weights::ExpertStacks;

/// Columns per quantization block (and the cpu's, fast/int8.rs).
const BLOCK: usize = 32;

/// Words of one quantized row of `cols` columns: per block, its scale and 8 words of bytes.
pub fn row_words(cols: usize) -> usize {
    cols / BLOCK * 9
}

/// Whether a product of `format` with rows of `cols` columns can take the integer form.
pub fn eligible(format: WeightFormat, cols: usize) -> bool {
    has_int_form(format) && cols > 0 && cols.is_multiple_of(BLOCK)
}

/// Whether an MoE layer's experts can take the integer form (both of their products).
pub fn experts_eligible(ex: &ExpertStacks) -> bool {
    eligible(ex.format, ex.hidden) && eligible(ex.format, ex.inter)
}

/// Whether this product takes the integer form: the backend quantizes (it has `xq`) and the
/// matrix qualifies.
pub(super) fn takes(cx: &Context, format: WeightFormat, cols: usize) -> bool {
    cx.xq.is_some() && eligible(format, cols)
}

/// `takes` for an MoE layer's experts (both of their products).
pub(super) fn takes_experts(cx: &Context, ex: &ExpertStacks) -> bool {
    cx.xq.is_some() && experts_eligible(ex)
}

/// The integer form's matrix-vector kernel for `kernel` (an f32 one).
pub(super) fn int_kernel(kernel: Kernel) -> Kernel {
    match kernel {
        Kernel::Matvec8 => Kernel::Matvec8Q,
        Kernel::Matvec32 => Kernel::Matvec32Q,
        Kernel::MoeGateUpMv => Kernel::MoeGateUpMvQ,
        Kernel::MoeDownMv => Kernel::MoeDownMvQ,
        _ => unreachable!("{kernel:?} has no integer form"),
    }
}

/// The dispatch quantizing `x` (rows of `k` columns, `per` rows a grid row, grid rows counted
/// by `rows`) into `xq`, from the module of the product's `format`. It runs only where the
/// product it feeds takes a matrix-vector variant, chosen the same way (`choice`, at most
/// `max_rows`): its own grid is empty.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantize(
    cx: &Context,
    format: WeightFormat,
    x: wgpu::Buffer,
    k: usize,
    per: usize,
    rows: Extent,
    choice: Choice,
    max_rows: usize,
) -> Pending {
    let xq = cx
        .xq
        .expect("int8 products only with the xq buffer")
        .clone();
    let blocks = (per * (k / BLOCK)).div_ceil(64) as u32;
    Pending {
        kernel: Kernel::QuantizeRows,
        format: Some(format),
        buffers: vec![(2, x), (7, xq)],
        params: (8, [k as u32, per as u32, 0, 0, 0, 0, 0, 0]),
        grid: Grid::Direct(Extent::Fixed(0), Extent::Fixed(0)),
        needs_out: matches!(rows, Extent::Out(_)),
        small: Some((
            choice,
            vec![(
                max_rows,
                Kernel::QuantizeRows,
                Grid::Direct(Extent::Fixed(blocks), rows),
            )],
        )),
    }
}

/// The integer kernels' binding of the quantized rows.
pub(super) fn xq_binding(cx: &Context) -> (u32, wgpu::Buffer) {
    (
        9,
        cx.xq
            .expect("int8 products only with the xq buffer")
            .clone(),
    )
}

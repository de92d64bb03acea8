//! Weights on the device. A matrix is (format, packed words, shape), split into row ranges that
//! each fit one storage binding (the real lm_head is 644 MB in bf16; many adapters bind at most
//! 128 MiB). An MoE layer's experts are stacked, [gate; up] and down, and split by whole experts,
//! so the expert kernels find any expert by index. Vectors (norms, router bias) are f32.
//!
//! Packing writes into buffers mapped at creation, a few MiB at a time: no second host copy of
//! the model.

use crate::format::WeightFormat;
use std::ops::Range;
use unmask_core::weights::Tensor;
use unmask_core::{Error, Result};

/// One binding's worth of a matrix: rows `rows` of the whole.
pub struct MatrixPart {
    pub buffer: wgpu::Buffer,
    pub rows: Range<usize>,
}

pub struct DeviceMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    /// Words per packed row.
    pub stride: usize,
    pub parts: Vec<MatrixPart>,
}

/// The experts of one MoE layer, split by whole experts: part `i` holds experts
/// `bounds[i] .. bounds[i + 1]`.
pub struct ExpertStacks {
    pub format: WeightFormat,
    pub experts: usize,
    pub hidden: usize,
    /// Expert width (rows of gate and of up, columns of down).
    pub inter: usize,
    pub gate_up_stride: usize,
    pub down_stride: usize,
    pub bounds: Vec<u32>,
    pub bounds_buffer: wgpu::Buffer,
    /// Per part: every expert's gate rows then its up rows, expert after expert.
    pub gate_up: Vec<wgpu::Buffer>,
    pub down: Vec<wgpu::Buffer>,
}

/// Writes into a buffer mapped at creation (wgpu maps write-only: no `&mut [u8]`).
pub struct Writer {
    view: wgpu::BufferViewMut,
}

impl Writer {
    /// Writes `words` at word offset `at`.
    pub fn put(&mut self, at: usize, words: &[u32]) {
        self.view
            .slice(at * 4..(at + words.len()) * 4)
            .copy_from_slice(bytemuck::cast_slice(words));
    }

    /// Packs rows `rows` of `t` at word offset `at`, a few MiB at a time.
    pub fn put_rows(
        &mut self,
        at: usize,
        format: WeightFormat,
        t: &Tensor,
        cols: usize,
        rows: Range<usize>,
    ) {
        let stride = format.row_words(cols);
        let batch = ((4 << 20) / (stride * 4)).max(1);
        let mut tmp = Vec::new();
        let mut r = rows.start;
        while r < rows.end {
            let r1 = (r + batch).min(rows.end);
            tmp.resize((r1 - r) * stride, 0);
            format.pack_rows(t, cols, r..r1, &mut tmp);
            self.put(at + (r - rows.start) * stride, &tmp);
            r = r1;
        }
    }
}

/// Creates a storage buffer of `words` u32 and lets `fill` write it while mapped.
fn mapped_buffer(
    device: &wgpu::Device,
    label: &str,
    words: usize,
    fill: impl FnOnce(&mut Writer),
) -> wgpu::Buffer {
    let size = (words.max(1) * 4) as u64;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: true,
    });
    {
        let view = buffer
            .slice(..)
            .get_mapped_range_mut()
            .expect("a buffer mapped at creation can be written");
        fill(&mut Writer { view });
    }
    buffer.unmap();
    buffer
}

fn shape2(t: &Tensor, name: &str) -> Result<(usize, usize)> {
    match t.shape.as_slice() {
        [r, c] => Ok((*r, *c)),
        s => Err(Error::Weights(format!(
            "`{name}` has shape {s:?}; a matrix needs two dimensions"
        ))),
    }
}

fn too_large(name: &str, what: &str, bytes: usize, limit: u64) -> Error {
    Error::backend(
        "wgpu",
        format!(
            "`{name}`: {what} takes {bytes} bytes, more than one storage binding of this adapter \
             ({limit} bytes)"
        ),
    )
}

/// Uploads a `[rows, cols]` matrix split into row ranges of at most `max_binding` bytes and
/// `max_rows` rows.
pub fn upload_matrix(
    device: &wgpu::Device,
    name: &str,
    t: &Tensor,
    max_binding: u64,
    max_rows: usize,
) -> Result<DeviceMatrix> {
    let format = WeightFormat::of(t.dtype)?;
    let (rows, cols) = shape2(t, name)?;
    let stride = format.row_words(cols);
    let per_part = (max_binding as usize / (stride * 4))
        .min(max_rows)
        .min(rows.max(1));
    if per_part == 0 {
        return Err(too_large(name, "one row", stride * 4, max_binding));
    }
    let mut parts = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + per_part).min(rows);
        let buffer = mapped_buffer(device, name, (r1 - r0) * stride, |w| {
            w.put_rows(0, format, t, cols, r0..r1)
        });
        parts.push(MatrixPart {
            buffer,
            rows: r0..r1,
        });
        r0 = r1;
    }
    Ok(DeviceMatrix {
        format,
        rows,
        cols,
        stride,
        parts,
    })
}

/// Uploads a vector (any stored dtype) widened to f32.
pub fn upload_vector(device: &wgpu::Device, name: &str, t: &Tensor) -> wgpu::Buffer {
    let v = t.to_f32();
    let words: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    mapped_buffer(device, name, words.len(), |w| w.put(0, &words))
}

/// Stacks and uploads one layer's experts (`gate[e]`, `up[e]`: `[inter, hidden]`; `down[e]`:
/// `[hidden, inter]`), all in one format.
pub fn upload_experts(
    device: &wgpu::Device,
    layer: &str,
    gate: &[Tensor],
    up: &[Tensor],
    down: &[Tensor],
    max_binding: u64,
) -> Result<ExpertStacks> {
    let experts = gate.len();
    let first = gate
        .first()
        .ok_or_else(|| Error::Weights(format!("{layer}: an MoE layer without experts")))?;
    let format = WeightFormat::of(first.dtype)?;
    let (inter, hidden) = shape2(first, layer)?;
    for t in gate.iter().chain(up).chain(down) {
        if WeightFormat::of(t.dtype)? != format {
            return Err(Error::backend(
                "wgpu",
                format!("{layer}: experts stored in mixed dtypes are not supported"),
            ));
        }
    }
    let gate_up_stride = format.row_words(hidden);
    let down_stride = format.row_words(inter);
    let gu_bytes = 2 * inter * gate_up_stride * 4;
    let down_bytes = hidden * down_stride * 4;
    let per_part = (max_binding as usize / gu_bytes.max(down_bytes)).min(experts);
    if per_part == 0 {
        return Err(too_large(
            layer,
            "one expert",
            gu_bytes.max(down_bytes),
            max_binding,
        ));
    }
    let mut bounds = vec![0u32];
    let (mut gate_up, mut down_parts) = (Vec::new(), Vec::new());
    let mut e0 = 0;
    while e0 < experts {
        let e1 = (e0 + per_part).min(experts);
        let gu_words = 2 * inter * gate_up_stride;
        gate_up.push(mapped_buffer(
            device,
            &format!("{layer}.experts.gate_up"),
            (e1 - e0) * gu_words,
            |w| {
                for e in e0..e1 {
                    let at = (e - e0) * gu_words;
                    w.put_rows(at, format, &gate[e], hidden, 0..inter);
                    w.put_rows(
                        at + inter * gate_up_stride,
                        format,
                        &up[e],
                        hidden,
                        0..inter,
                    );
                }
            },
        ));
        let d_words = hidden * down_stride;
        down_parts.push(mapped_buffer(
            device,
            &format!("{layer}.experts.down"),
            (e1 - e0) * d_words,
            |w| {
                for (i, t) in down[e0..e1].iter().enumerate() {
                    w.put_rows(i * d_words, format, t, inter, 0..hidden);
                }
            },
        ));
        bounds.push(e1 as u32);
        e0 = e1;
    }
    let bounds_buffer = mapped_buffer(
        device,
        &format!("{layer}.experts.bounds"),
        bounds.len(),
        |w| w.put(0, &bounds),
    );
    Ok(ExpertStacks {
        format,
        experts,
        hidden,
        inter,
        gate_up_stride,
        down_stride,
        bounds,
        bounds_buffer,
        gate_up,
        down: down_parts,
    })
}

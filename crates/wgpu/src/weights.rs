//! Weights on the device. A matrix is (format, packed words, shape), split into row ranges that
//! each fit one storage binding (the real lm_head is 644 MB in bf16; many adapters bind at most
//! 128 MiB). An MoE layer's experts are stacked, [gate; up] and down, and split by whole experts,
//! so the expert kernels find any expert by index. Vectors (norms, router bias) are f32.
//!
//! Packing writes a few MiB at a time through `Queue::write_buffer`, flushed after each buffer:
//! no host copy of a whole buffer ever exists (in the browser a mapped buffer would be mirrored
//! in wasm memory), and experts are taken from their source one at a time, so host memory holds
//! about one expert or one matrix while the model goes to the device.

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
/// `i * per_part ..` (at most `per_part` of them), one binding each.
pub struct ExpertStacks {
    pub format: WeightFormat,
    pub experts: usize,
    pub hidden: usize,
    /// Expert width (rows of gate and of up, columns of down).
    pub inter: usize,
    pub gate_up_stride: usize,
    pub down_stride: usize,
    /// Experts per part (the last part may hold fewer).
    pub per_part: usize,
    /// Parts one expert dispatch reads (`expert_parts` bindings); dispatch `d` covers parts
    /// `d * parts_per_dispatch ..` and experts `first_expert(d) .. first_expert(d + 1)`.
    pub parts_per_dispatch: usize,
    /// Every dispatch's `first_expert`, and the end, on the device (read by `moe_group`).
    pub bounds_buffer: wgpu::Buffer,
    /// Per part: every expert's gate rows then its up rows, expert after expert.
    pub gate_up: Vec<wgpu::Buffer>,
    pub down: Vec<wgpu::Buffer>,
}

impl ExpertStacks {
    pub fn dispatches(&self) -> usize {
        self.gate_up.len().div_ceil(self.parts_per_dispatch)
    }

    /// The first expert dispatch `d` reads (`experts` for `d` = `dispatches()`).
    pub fn first_expert(&self, d: usize) -> u32 {
        first_expert(d, self.parts_per_dispatch * self.per_part, self.experts)
    }

    /// The parts dispatch `d` reads.
    pub fn parts_of(&self, d: usize) -> std::ops::Range<usize> {
        let first = d * self.parts_per_dispatch;
        first..(first + self.parts_per_dispatch).min(self.gate_up.len())
    }
}

/// The first expert of dispatch `d` when each reads `per_dispatch` experts of `experts`.
fn first_expert(d: usize, per_dispatch: usize, experts: usize) -> u32 {
    (d * per_dispatch).min(experts) as u32
}

/// The device and queue weights are uploaded through.
#[derive(Clone, Copy)]
pub struct Uploader<'a> {
    pub device: &'a wgpu::Device,
    pub queue: &'a wgpu::Queue,
}

/// Writes into one device buffer.
pub struct Writer<'a> {
    queue: &'a wgpu::Queue,
    buffer: &'a wgpu::Buffer,
}

impl Writer<'_> {
    /// Writes `words` at word offset `at`.
    pub fn put(&mut self, at: usize, words: &[u32]) {
        if !words.is_empty() {
            self.queue
                .write_buffer(self.buffer, (at * 4) as u64, bytemuck::cast_slice(words));
        }
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

impl<'a> Uploader<'a> {
    /// An empty storage buffer of `words` u32, to be written.
    fn create(&self, label: &str, words: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (words.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn writer<'b>(&'b self, buffer: &'b wgpu::Buffer) -> Writer<'b> {
        Writer {
            queue: self.queue,
            buffer,
        }
    }

    /// Submits the queued writes, so their staging memory does not pile up.
    fn flush(&self) {
        self.queue.submit(std::iter::empty());
    }

    /// A storage buffer of `words` u32 written by `fill`.
    fn buffer(&self, label: &str, words: usize, fill: impl FnOnce(&mut Writer)) -> wgpu::Buffer {
        let buffer = self.create(label, words);
        fill(&mut self.writer(&buffer));
        self.flush();
        buffer
    }
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
    up: Uploader,
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
        let buffer = up.buffer(name, (r1 - r0) * stride, |w| {
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
pub fn upload_vector(up: Uploader, name: &str, t: &Tensor) -> wgpu::Buffer {
    let v = t.to_f32();
    let words: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
    up.buffer(name, words.len(), |w| w.put(0, &words))
}

/// One expert's matrices: gate and up `[inter, hidden]`, down `[hidden, inter]`.
pub struct Expert {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

/// Stacks and uploads one layer's `experts` experts, all in one format; `expert(e)` gives
/// expert `e`, asked for once, in order, and dropped after its upload.
pub fn upload_experts(
    up: Uploader,
    layer: &str,
    experts: usize,
    expert: &mut dyn FnMut(usize) -> Result<Expert>,
    max_binding: u64,
    parts_per_dispatch: usize,
) -> Result<ExpertStacks> {
    if experts == 0 {
        return Err(Error::Weights(format!(
            "{layer}: an MoE layer without experts"
        )));
    }
    // The first expert fixes the format and the sizes; each later one is checked against it.
    let mut next = Some(expert(0)?);
    let first = next.as_ref().expect("just set");
    let format = WeightFormat::of(first.gate.dtype)?;
    let (inter, hidden) = shape2(&first.gate, layer)?;
    let gate_up_stride = format.row_words(hidden);
    let down_stride = format.row_words(inter);
    let gu_words = 2 * inter * gate_up_stride;
    let d_words = hidden * down_stride;
    let (gu_bytes, down_bytes) = (gu_words * 4, d_words * 4);
    let per_part = (max_binding as usize / gu_bytes.max(down_bytes)).min(experts);
    if per_part == 0 {
        return Err(too_large(
            layer,
            "one expert",
            gu_bytes.max(down_bytes),
            max_binding,
        ));
    }
    let mut take = |e: usize| -> Result<Expert> {
        let x = match next.take() {
            Some(x) => x,
            None => expert(e)?,
        };
        for t in [&x.gate, &x.up, &x.down] {
            if WeightFormat::of(t.dtype)? != format {
                return Err(Error::backend(
                    "wgpu",
                    format!("{layer}: experts stored in mixed dtypes are not supported"),
                ));
            }
        }
        Ok(x)
    };
    let parts_per_dispatch = parts_per_dispatch.max(1);
    let (mut gate_up, mut down_parts) = (Vec::new(), Vec::new());
    let mut e0 = 0;
    while e0 < experts {
        let e1 = (e0 + per_part).min(experts);
        let gu = up.create(&format!("{layer}.experts.gate_up"), (e1 - e0) * gu_words);
        let dn = up.create(&format!("{layer}.experts.down"), (e1 - e0) * d_words);
        let (mut gw, mut dw) = (up.writer(&gu), up.writer(&dn));
        for e in e0..e1 {
            let x = take(e)?;
            let at = (e - e0) * gu_words;
            gw.put_rows(at, format, &x.gate, hidden, 0..inter);
            gw.put_rows(at + inter * gate_up_stride, format, &x.up, hidden, 0..inter);
            dw.put_rows((e - e0) * d_words, format, &x.down, inter, 0..hidden);
            up.flush();
        }
        gate_up.push(gu);
        down_parts.push(dn);
        e0 = e1;
    }
    let bounds: Vec<u32> = (0..=gate_up.len().div_ceil(parts_per_dispatch))
        .map(|d| first_expert(d, parts_per_dispatch * per_part, experts))
        .collect();
    let bounds_buffer = up.buffer(&format!("{layer}.experts.bounds"), bounds.len(), |w| {
        w.put(0, &bounds)
    });
    Ok(ExpertStacks {
        format,
        experts,
        hidden,
        inter,
        gate_up_stride,
        down_stride,
        per_part,
        parts_per_dispatch,
        bounds_buffer,
        gate_up,
        down: down_parts,
    })
}

//! Weights on the device: matrices in their stored format (f32, bf16, f16, q8_0, q4 bytes as
//! they are on disk), per-channel vectors widened to f32, and each MoE layer's experts stacked
//! into one allocation per projection so a grouped kernel finds expert `e` at `e * stride`.
//! A benchmark can instead fill every tensor with random values on the device.

use crate::availability::cuda_error;
use crate::device::{Arg, Device, DeviceMem, Launch};
use std::collections::HashMap;
use unmask_core::graph::{ExpertSet, Graph, Op, WeightId, WeightRole};
use unmask_core::weights::WeightStore;
use unmask_core::Result;

/// Stored formats the kernels read (`DT_*` in kernels/common.cuh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    Bf16,
    F16,
    Q8_0,
    Q4,
}

impl WeightFormat {
    /// By the name `unmask_core::weights::DType::name` gives.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "f32" => WeightFormat::F32,
            "bf16" => WeightFormat::Bf16,
            "f16" => WeightFormat::F16,
            "q8_0" => WeightFormat::Q8_0,
            "q4" => WeightFormat::Q4,
            _ => return None,
        })
    }

    /// Kernel-name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4 => "q4",
        }
    }

    /// `DT_*` code of kernels/common.cuh (the float ones; `fill_random` takes them).
    fn code(self) -> u32 {
        match self {
            WeightFormat::F32 => 0,
            WeightFormat::Bf16 => 1,
            WeightFormat::F16 => 2,
            WeightFormat::Q8_0 => 3,
            WeightFormat::Q4 => 4,
        }
    }

    /// Bytes of a `[rows, cols]` matrix on the device (quantized: `Packed::padded`'s shape).
    pub fn bytes(self, rows: usize, cols: usize) -> usize {
        let nb = cols.div_ceil(32);
        match self {
            WeightFormat::F32 => rows * cols * 4,
            WeightFormat::Bf16 | WeightFormat::F16 => rows * cols * 2,
            WeightFormat::Q8_0 => rows * nb * 34,
            WeightFormat::Q4 => rows * nb * 18,
        }
    }
}

/// A matrix as the kernels see it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMatrix {
    pub ptr: u64,
    pub rows: usize,
    pub cols: usize,
    pub format: WeightFormat,
}

/// One MoE layer's experts, stacked.
#[derive(Debug, Clone, Copy)]
pub struct ExpertStack {
    pub gate: u64,
    pub up: u64,
    pub down: u64,
    pub gate_up_format: WeightFormat,
    pub down_format: WeightFormat,
    /// Bytes from one expert's gate (or up) matrix to the next's.
    pub gate_up_stride: u64,
    pub down_stride: u64,
    pub count: usize,
    /// Expert width (gate/up rows) and hidden size (their columns).
    pub inter: usize,
    pub hidden: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum DeviceWeight {
    Matrix(DeviceMatrix),
    /// f32 values.
    Vector {
        ptr: u64,
        len: usize,
    },
    /// Lives in an [`ExpertStack`].
    Stacked,
}

/// Random weights made on the device (`unmask bench --shape`).
#[derive(Debug, Clone, Copy)]
pub struct RandomFormat {
    /// Format of matrices and the embedding table; routers stay bf16 when this is quantized.
    pub format: WeightFormat,
    pub seed: u64,
}

pub struct DeviceWeights {
    pub items: Vec<DeviceWeight>,
    /// By index of the `MoeExperts` op.
    pub stacks: HashMap<usize, ExpertStack>,
    pub bytes: usize,
    _mems: Vec<DeviceMem>,
}

/// Where tensor contents come from.
pub enum Source<'a> {
    Host(&'a WeightStore),
    Random(RandomFormat),
}

const STACK_ALIGN: usize = 256;

impl DeviceWeights {
    pub fn upload(
        dev: &Device,
        g: &Graph,
        src: &Source,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let total = g.weights.len();
        let mut done = 0;
        let mut w = DeviceWeights {
            items: vec![DeviceWeight::Stacked; total],
            stacks: HashMap::new(),
            bytes: 0,
            _mems: Vec::new(),
        };
        let mut stacked = vec![false; total];
        for (oi, op) in g.ops.iter().enumerate() {
            if let Op::MoeExperts { experts, .. } = op {
                let stack = w.stack(dev, g, src, experts, oi as u64)?;
                w.stacks.insert(oi, stack);
                for id in experts.gate.iter().chain(&experts.up).chain(&experts.down) {
                    stacked[id.0] = true;
                    done += 1;
                    progress(done, total);
                }
            }
        }
        for (i, desc) in g.weights.iter().enumerate() {
            if stacked[i] {
                continue;
            }
            w.items[i] = match desc.role {
                WeightRole::Vector => {
                    let values = match src {
                        Source::Host(store) => {
                            let t = store.get(&desc.name)?;
                            check_shape(&desc.name, &t.shape, &desc.shape)?;
                            t.to_f32()
                        }
                        Source::Random(_) => Vec::new(),
                    };
                    let len: usize = desc.shape.iter().product();
                    let mem = dev.alloc(len * 4)?;
                    match src {
                        Source::Host(_) => dev.upload(mem.ptr(), &values)?,
                        Source::Random(r) => {
                            let (offset, scale) = if desc.name.ends_with("expert_bias") {
                                (0.0, 0.05)
                            } else {
                                (1.0, 0.1)
                            };
                            fill(
                                dev,
                                &mem,
                                WeightFormat::F32,
                                (1, len),
                                r.seed ^ i as u64,
                                offset,
                                scale,
                                false,
                            )?;
                        }
                    }
                    let ptr = mem.ptr();
                    w.keep(mem);
                    DeviceWeight::Vector { ptr, len }
                }
                role => {
                    let (rows, cols) = matrix_shape(&desc.name, &desc.shape)?;
                    let format = match src {
                        Source::Host(store) => host_format(store, &desc.name, &desc.shape)?,
                        Source::Random(r) => random_format(r.format, role),
                    };
                    let mem = dev.alloc(format.bytes(rows, cols))?;
                    match src {
                        Source::Host(store) => {
                            upload_exact(dev, mem.ptr(), store, &desc.name, format, (rows, cols))?
                        }
                        Source::Random(r) => fill(
                            dev,
                            &mem,
                            format,
                            (rows, cols),
                            r.seed ^ i as u64,
                            0.0,
                            0.02,
                            true,
                        )?,
                    }
                    let ptr = mem.ptr();
                    w.keep(mem);
                    DeviceWeight::Matrix(DeviceMatrix {
                        ptr,
                        rows,
                        cols,
                        format,
                    })
                }
            };
            done += 1;
            progress(done, total);
        }
        dev.sync()?;
        Ok(w)
    }

    fn keep(&mut self, mem: DeviceMem) {
        self.bytes += mem.len();
        self._mems.push(mem);
    }

    fn stack(
        &mut self,
        dev: &Device,
        g: &Graph,
        src: &Source,
        ex: &ExpertSet,
        salt: u64,
    ) -> Result<ExpertStack> {
        let count = ex.gate.len();
        if count == 0 || ex.up.len() != count || ex.down.len() != count {
            return Err(cuda_error(
                "an expert set without matching gate/up/down lists",
            ));
        }
        let (inter, hidden) =
            matrix_shape(&g.weight(ex.gate[0]).name, &g.weight(ex.gate[0]).shape)?;
        let mut one = |ids: &[WeightId],
                       shape: (usize, usize),
                       salt: u64|
         -> Result<(u64, WeightFormat, u64)> {
            let mut format = None;
            for &id in ids {
                let d = g.weight(id);
                if matrix_shape(&d.name, &d.shape)? != shape {
                    return Err(cuda_error(format!(
                        "expert tensor `{}` has shape {:?}; its layer's experts are {:?}",
                        d.name, d.shape, shape
                    )));
                }
                let f = match src {
                    Source::Host(store) => host_format(store, &d.name, &d.shape)?,
                    Source::Random(r) => random_format(r.format, WeightRole::Matrix),
                };
                if *format.get_or_insert(f) != f {
                    return Err(cuda_error(format!(
                        "expert tensor `{}` is {}, its layer's other experts are not: a layer's \
                         experts must share one format",
                        d.name,
                        f.suffix()
                    )));
                }
            }
            let format = format.unwrap();
            let bytes = format.bytes(shape.0, shape.1);
            let stride = bytes.div_ceil(STACK_ALIGN) * STACK_ALIGN;
            let mem = dev.alloc(stride * ids.len())?;
            for (e, &id) in ids.iter().enumerate() {
                let at = mem.ptr() + (e * stride) as u64;
                match src {
                    Source::Host(store) => {
                        upload_exact(dev, at, store, &g.weight(id).name, format, shape)?
                    }
                    Source::Random(r) => fill_at(
                        dev,
                        at,
                        format,
                        shape,
                        r.seed ^ salt.wrapping_mul(0x9e37_79b9) ^ id.0 as u64,
                        0.0,
                        0.02,
                        true,
                    )?,
                }
            }
            let ptr = mem.ptr();
            self.keep(mem);
            Ok((ptr, format, stride as u64))
        };
        let (gate, gf, gs) = one(&ex.gate, (inter, hidden), salt)?;
        let (up, uf, _) = one(&ex.up, (inter, hidden), salt + 1)?;
        let (down, df, ds) = one(&ex.down, (hidden, inter), salt + 2)?;
        if gf != uf {
            return Err(cuda_error(
                "an MoE layer's gate and up projections must share one format",
            ));
        }
        Ok(ExpertStack {
            gate,
            up,
            down,
            gate_up_format: gf,
            down_format: df,
            gate_up_stride: gs,
            down_stride: ds,
            count,
            inter,
            hidden,
        })
    }

    /// Made-up, distinct addresses for every weight of `g` (matrices and stacks stored as
    /// `format`) and no memory: what the recording tests need to build launch lists without a
    /// device.
    #[cfg(test)]
    pub(crate) fn addresses_only(g: &Graph, format: WeightFormat) -> Self {
        let at = |i: usize| 0x7000_0000_0000u64 + ((i as u64) << 32);
        let mut items = Vec::with_capacity(g.weights.len());
        for (i, desc) in g.weights.iter().enumerate() {
            items.push(match desc.role {
                WeightRole::Vector => DeviceWeight::Vector {
                    ptr: at(i),
                    len: desc.shape.iter().product(),
                },
                _ => DeviceWeight::Matrix(DeviceMatrix {
                    ptr: at(i),
                    rows: desc.shape[0],
                    cols: desc.shape.iter().skip(1).product(),
                    format,
                }),
            });
        }
        let mut stacks = HashMap::new();
        for (oi, op) in g.ops.iter().enumerate() {
            if let Op::MoeExperts { experts, .. } = op {
                let gate = g.weight(experts.gate[0]);
                let base = at(g.weights.len() + oi);
                stacks.insert(
                    oi,
                    ExpertStack {
                        gate: base,
                        up: base + (1 << 28),
                        down: base + (2 << 28),
                        gate_up_format: format,
                        down_format: format,
                        gate_up_stride: 1 << 20,
                        down_stride: 1 << 20,
                        count: experts.gate.len(),
                        inter: gate.shape[0],
                        hidden: gate.shape[1],
                    },
                );
            }
        }
        DeviceWeights {
            items,
            stacks,
            bytes: 0,
            _mems: Vec::new(),
        }
    }

    pub fn matrix(&self, id: WeightId) -> Result<DeviceMatrix> {
        match self.items[id.0] {
            DeviceWeight::Matrix(m) => Ok(m),
            _ => Err(cuda_error(format!("weight {} is not a matrix", id.0))),
        }
    }

    pub fn vector(&self, id: WeightId) -> Result<(u64, usize)> {
        match self.items[id.0] {
            DeviceWeight::Vector { ptr, len } => Ok((ptr, len)),
            _ => Err(cuda_error(format!("weight {} is not a vector", id.0))),
        }
    }
}

/// Copies a tensor's bytes after checking they are exactly what the kernels will read.
fn upload_exact(
    dev: &Device,
    at: u64,
    store: &WeightStore,
    name: &str,
    format: WeightFormat,
    (rows, cols): (usize, usize),
) -> Result<()> {
    let t = store.get(name)?;
    // Quantized kernels read blocks of exactly 32 columns (common.cuh): the padded view, which
    // is the stored bytes themselves unless a row's last block is wider than 32.
    let bytes = match t.packed() {
        Some(p) => p.padded(),
        None => std::borrow::Cow::Borrowed(t.bytes()),
    };
    let want = format.bytes(rows, cols);
    if bytes.len() != want {
        return Err(cuda_error(format!(
            "tensor `{name}` holds {} bytes; a {rows}x{cols} {} matrix is {want}",
            bytes.len(),
            format.suffix()
        )));
    }
    dev.upload(at, &bytes)
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(unmask_core::Error::Weights(format!(
            "tensor `{name}` has shape {got:?}, expected {want:?}"
        )));
    }
    Ok(())
}

fn matrix_shape(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [r, c] => Ok((*r, *c)),
        _ => Err(cuda_error(format!(
            "tensor `{name}` of shape {shape:?} is used as a matrix"
        ))),
    }
}

fn host_format(store: &WeightStore, name: &str, shape: &[usize]) -> Result<WeightFormat> {
    let t = store.get(name)?;
    check_shape(name, &t.shape, shape)?;
    WeightFormat::from_name(t.dtype.name()).ok_or_else(|| {
        cuda_error(format!(
            "tensor `{name}` is stored as {}, which the CUDA kernels do not read",
            t.dtype.name()
        ))
    })
}

/// Routers keep full precision (SPEC: the choice of experts is sensitive); quantized formats
/// apply to matrices and the embedding table, as the quantizer's plan does.
fn random_format(format: WeightFormat, role: WeightRole) -> WeightFormat {
    let quantized = matches!(format, WeightFormat::Q8_0 | WeightFormat::Q4);
    match role {
        WeightRole::Router if quantized => WeightFormat::Bf16,
        _ => format,
    }
}

#[allow(clippy::too_many_arguments)]
fn fill(
    dev: &Device,
    mem: &DeviceMem,
    format: WeightFormat,
    shape: (usize, usize),
    seed: u64,
    offset: f32,
    scale: f32,
    normal: bool,
) -> Result<()> {
    fill_at(dev, mem.ptr(), format, shape, seed, offset, scale, normal)
}

#[allow(clippy::too_many_arguments)]
fn fill_at(
    dev: &Device,
    ptr: u64,
    format: WeightFormat,
    shape: (usize, usize),
    seed: u64,
    offset: f32,
    scale: f32,
    normal: bool,
) -> Result<()> {
    dev.launch(&fill_launch(
        ptr, format, shape, seed, offset, scale, normal,
    ))
}

/// The launch that fills a `[rows, cols]` matrix at `ptr` with random values stored as
/// `format` (kernels/random.cu).
pub(crate) fn fill_launch(
    ptr: u64,
    format: WeightFormat,
    (rows, cols): (usize, usize),
    seed: u64,
    offset: f32,
    scale: f32,
    normal: bool,
) -> Launch {
    let seed = (seed ^ (seed >> 32)) as u32;
    let tail = [
        Arg::U32(seed),
        Arg::F32(offset),
        Arg::F32(scale),
        Arg::U32(normal as u32),
    ];
    match format {
        WeightFormat::Q8_0 | WeightFormat::Q4 => {
            let blocks = (rows * cols.div_ceil(32)) as u64;
            let mut args = vec![Arg::Ptr(ptr), Arg::U32(rows as u32), Arg::U32(cols as u32)];
            args.extend(tail);
            Launch {
                kernel: format!("fill_random_{}", format.suffix()),
                grid: (blocks.div_ceil(256) as u32, 1, 1),
                block: (256, 1, 1),
                shared_bytes: 0,
                args,
                op: 0,
            }
        }
        _ => {
            let count = (rows * cols) as u64;
            let mut args = vec![Arg::Ptr(ptr), Arg::U32(format.code()), Arg::U64(count)];
            args.extend(tail);
            Launch {
                kernel: "fill_random".into(),
                grid: (count.div_ceil(256) as u32, 1, 1),
                block: (256, 1, 1),
                shared_bytes: 0,
                args,
                op: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_core_formats() {
        use unmask_core::weights::DType;
        for (f, d) in [
            (WeightFormat::F32, DType::F32),
            (WeightFormat::Bf16, DType::BF16),
            (WeightFormat::F16, DType::F16),
        ] {
            assert_eq!(WeightFormat::from_name(d.name()), Some(f));
            assert_eq!(f.bytes(7, 33), d.bytes_for(7 * 33));
        }
        // The padded planes of crates/core/src/quant: 34 and 18 bytes per 32-column block.
        use unmask_core::quant::QuantFormat;
        assert_eq!(WeightFormat::Q8_0.bytes(3, 33), 3 * 2 * 34);
        assert_eq!(WeightFormat::Q4.bytes(3, 64), 3 * 2 * 18);
        for (f, q) in [
            (WeightFormat::Q8_0, QuantFormat::Q8_0),
            (WeightFormat::Q4, QuantFormat::Q4),
        ] {
            for cols in [20, 33, 48, 64, 80] {
                assert_eq!(f.bytes(3, cols), q.padded_bytes_for(3, cols));
            }
        }
    }

    #[test]
    fn routers_stay_unquantized() {
        assert_eq!(
            random_format(WeightFormat::Q4, WeightRole::Router),
            WeightFormat::Bf16
        );
        assert_eq!(
            random_format(WeightFormat::Q4, WeightRole::Embedding),
            WeightFormat::Q4
        );
        assert_eq!(
            random_format(WeightFormat::F16, WeightRole::Router),
            WeightFormat::F16
        );
    }
}

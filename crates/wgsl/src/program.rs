//! The graph compiled for the device: every op becomes one or more dispatches with their
//! pipeline, a bind group made at load, and a grid that depends only on the chunk's row counts.
//! A step replays this list once per chunk, changing nothing but the dynamic offset of the step
//! parameters. Built again only when the KV cache grows (its buffers are in the bind groups).

use crate::arena::ArenaPlan;
use crate::format::WeightFormat;
use crate::kernels::{Kernel, Kernels};
use crate::kv::KvCache;
use crate::weights::{DeviceMatrix, ExpertStacks};
use unmask_core::graph::{BufId, Graph, Op, Rows};

/// Rows and features of the dense tiles (BM, BN in matmul.wgsl).
pub const TILE_ROWS: usize = 32;
pub const TILE_FEATURES: usize = 32;
/// Rows of the narrow tiles (NR): products over at most this many rows use `matmul_narrow`
/// (tiles 2 * TILE_FEATURES wide). Expert work items hold at most TILE_ROWS rows (gate/up tiles
/// TILE_FEATURES wide, down tiles 2 * TILE_FEATURES wide) and compute them NR at a time.
pub const NARROW_ROWS: usize = 8;

/// One dimension of a dispatch grid.
#[derive(Debug, Clone, Copy)]
pub enum Extent {
    Fixed(u32),
    /// ceil(chunk tokens / per)
    Tokens(u32),
    /// ceil(chunk predicted rows / per)
    Out(u32),
}

impl Extent {
    fn of(rows: Rows, per: usize) -> Extent {
        match rows {
            Rows::Tokens => Extent::Tokens(per as u32),
            Rows::Out => Extent::Out(per as u32),
        }
    }

    pub fn resolve(self, n: usize, out_rows: usize) -> u32 {
        match self {
            Extent::Fixed(v) => v,
            Extent::Tokens(per) => (n as u32).div_ceil(per),
            Extent::Out(per) => (out_rows as u32).div_ceil(per),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Grid {
    Direct(Extent, Extent),
    /// Arguments written on the device, at this byte offset of the MoE plan buffer.
    Indirect(u64),
}

pub struct Dispatch {
    pub kernel: Kernel,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    /// The seeded sampler, used instead when the step samples with a temperature.
    pub seeded: Option<(wgpu::ComputePipeline, wgpu::BindGroup)>,
    /// The narrow matmul and its grid, used instead when the product has at most NARROW_ROWS
    /// rows (counted by the extent).
    pub narrow: Option<(wgpu::ComputePipeline, wgpu::BindGroup, Grid, Extent)>,
    pub grid: Grid,
    /// Runs only when the chunk predicts rows (the head of the model).
    pub needs_out: bool,
}

/// Backend-private buffers of the MoE kernels, shared by every MoE layer.
pub struct MoeScratch {
    pub scores: wgpu::Buffer,
    pub counters: wgpu::Buffer,
    pub slots: wgpu::Buffer,
    pub plan: wgpu::Buffer,
    pub act: wgpu::Buffer,
    pub y: wgpu::Buffer,
    /// Entries (tokens * top_k) a chunk can have: where `slot_of` starts in `slots`.
    pub slot_cap: usize,
    /// Expert-stack parts of the most split layer (the plan is laid out for that many).
    pub max_parts: usize,
}

/// What the ops of the graph refer to on the device.
pub enum OpResource {
    None,
    Matrix(DeviceMatrix),
    /// A per-op f32 constant buffer (norm vectors, router bias).
    Vector(wgpu::Buffer),
    Experts(ExpertStacks),
}

pub struct Context<'a> {
    pub device: &'a wgpu::Device,
    pub kernels: &'a Kernels,
    pub graph: &'a Graph,
    pub arena: &'a ArenaPlan,
    pub slots: &'a [wgpu::Buffer],
    pub ids: &'a wgpu::Buffer,
    /// Matrices by weight id (embedding tables and linear layers).
    pub matrices: &'a [Option<DeviceMatrix>],
    /// Vectors by weight id.
    pub vectors: &'a [Option<wgpu::Buffer>],
    /// Per op: the expert stacks of `MoeExperts`, the [q norm; k norm] buffer of `QkNormRope`.
    pub op_experts: &'a [Option<ExpertStacks>],
    pub op_norms: &'a [Option<wgpu::Buffer>],
    pub dummy: &'a wgpu::Buffer,
    pub kv: &'a KvCache,
    pub moe: Option<&'a MoeScratch>,
    pub params_align: u64,
}

/// A dispatch before its parameter buffer exists.
struct Pending {
    kernel: Kernel,
    format: Option<WeightFormat>,
    /// (binding, buffer) for every non-parameter binding.
    buffers: Vec<(u32, wgpu::Buffer)>,
    /// (binding, words) of the op's parameters.
    params: (u32, [u32; 8]),
    grid: Grid,
    needs_out: bool,
    /// For `matmul`: the narrow variant's grid and the extent that counts the rows.
    narrow: Option<(Grid, Extent)>,
}

pub struct Program {
    pub dispatches: Vec<Dispatch>,
    /// Keeps the parameter buffer alive (the bind groups refer to it).
    pub params: wgpu::Buffer,
}

fn f(v: f32) -> u32 {
    v.to_bits()
}

impl Context<'_> {
    fn slot(&self, b: BufId) -> wgpu::Buffer {
        if b == self.graph.input_ids {
            return self.ids.clone();
        }
        let s = self.arena.slot_of[b.0].expect("every written buffer has a slot");
        self.slots[s].clone()
    }

    fn rows(&self, b: BufId) -> Rows {
        self.graph.buffer(b).rows
    }

    fn cols(&self, b: BufId) -> usize {
        self.graph.buffer(b).cols
    }

    fn compile_op(&self, index: usize, op: &Op, out: &mut Vec<Pending>) {
        let g = self.graph;
        match op {
            Op::Embed { ids, table, out: o } => {
                let m = self.matrices[table.0].as_ref().expect("uploaded table");
                for part in &m.parts {
                    out.push(Pending {
                        kernel: Kernel::Embed,
                        format: Some(m.format),
                        buffers: vec![
                            (1, part.buffer.clone()),
                            (2, self.slot(*ids)),
                            (3, self.slot(*o)),
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
                        narrow: None,
                    });
                }
            }
            Op::RmsNorm {
                x,
                weight,
                out: o,
                eps,
            } => {
                let d = g.weight(*weight).shape.iter().product::<usize>();
                let groups = self.cols(*x) / d;
                out.push(Pending {
                    kernel: Kernel::RmsNorm,
                    format: None,
                    buffers: vec![
                        (1, self.slot(*x)),
                        (2, self.vectors[weight.0].clone().expect("uploaded vector")),
                        (3, self.slot(*o)),
                    ],
                    params: (0, [d as u32, groups as u32, f(*eps), 0, 0, 0, 0, 0]),
                    grid: Grid::Direct(Extent::Fixed(groups as u32), Extent::of(self.rows(*x), 1)),
                    needs_out: self.rows(*x) == Rows::Out,
                    narrow: None,
                });
            }
            Op::MatMul { x, weight, out: o } => {
                let m = self.matrices[weight.0].as_ref().expect("uploaded matrix");
                let from_out = self.rows(*x) == Rows::Out;
                for part in &m.parts {
                    out.push(Pending {
                        kernel: Kernel::Matmul,
                        format: Some(m.format),
                        buffers: vec![
                            (1, part.buffer.clone()),
                            (2, self.slot(*x)),
                            (3, self.slot(*o)),
                        ],
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
                            Extent::of(self.rows(*x), TILE_ROWS),
                        ),
                        needs_out: from_out,
                        narrow: Some((
                            Grid::Direct(
                                Extent::Fixed(part.rows.len().div_ceil(2 * TILE_FEATURES) as u32),
                                Extent::Fixed(1),
                            ),
                            Extent::of(self.rows(*x), 1),
                        )),
                    });
                }
            }
            Op::QkNormRope {
                qkv,
                q_norm,
                k_norm,
                heads,
                rot_dim,
                theta,
                eps,
            } => {
                let table = &self.kv.tables[self.kv.table_index(*rot_dim, *theta)];
                let norms = self.op_norms[index].clone().unwrap_or(self.dummy.clone());
                out.push(Pending {
                    kernel: Kernel::QkNormRope,
                    format: None,
                    buffers: vec![
                        (1, self.slot(*qkv)),
                        (2, norms),
                        (
                            3,
                            table.buffer.clone().expect("table sized before compiling"),
                        ),
                    ],
                    params: (
                        0,
                        [
                            heads.dim as u32,
                            heads.q as u32,
                            heads.kv as u32,
                            (*rot_dim / 2) as u32,
                            ((heads.q + 2 * heads.kv) * heads.dim) as u32,
                            f(*eps),
                            q_norm.is_some() as u32,
                            k_norm.is_some() as u32,
                        ],
                    ),
                    grid: Grid::Direct(
                        Extent::Fixed((heads.q + heads.kv) as u32),
                        Extent::of(self.rows(*qkv), 1),
                    ),
                    needs_out: false,
                    narrow: None,
                });
            }
            Op::Attention {
                qkv,
                layer,
                heads,
                out: o,
            } => {
                let kv_width = heads.kv * heads.dim;
                let params = [
                    heads.dim as u32,
                    heads.q as u32,
                    heads.kv as u32,
                    ((heads.q + 2 * heads.kv) * heads.dim) as u32,
                    kv_width as u32,
                    f(1.0 / (heads.dim as f32).sqrt()),
                    0,
                    0,
                ];
                out.push(Pending {
                    kernel: Kernel::KvStore,
                    format: None,
                    buffers: vec![
                        (1, self.slot(*qkv)),
                        (2, self.kv.k[*layer].clone()),
                        (3, self.kv.v[*layer].clone()),
                    ],
                    params: (0, params),
                    grid: Grid::Direct(
                        Extent::Fixed((kv_width as u32).div_ceil(64)),
                        Extent::Tokens(1),
                    ),
                    needs_out: false,
                    narrow: None,
                });
                out.push(Pending {
                    kernel: Kernel::Attention,
                    format: None,
                    buffers: vec![
                        (1, self.slot(*qkv)),
                        (4, self.kv.k[*layer].clone()),
                        (5, self.kv.v[*layer].clone()),
                        (6, self.slot(*o)),
                    ],
                    params: (0, params),
                    grid: Grid::Direct(Extent::Fixed(heads.q as u32), Extent::Tokens(1)),
                    needs_out: false,
                    narrow: None,
                });
            }
            Op::Add { a, b, out: o }
            | Op::SwiGlu {
                gate: a,
                up: b,
                out: o,
            } => {
                let cols = self.cols(*o);
                out.push(Pending {
                    kernel: if matches!(op, Op::Add { .. }) {
                        Kernel::Add
                    } else {
                        Kernel::SwiGlu
                    },
                    format: None,
                    buffers: vec![(1, self.slot(*a)), (2, self.slot(*b)), (3, self.slot(*o))],
                    params: (0, [cols as u32, 0, 0, 0, 0, 0, 0, 0]),
                    grid: Grid::Direct(
                        Extent::Fixed((cols as u32).div_ceil(256)),
                        Extent::of(self.rows(*o), 1),
                    ),
                    needs_out: self.rows(*o) == Rows::Out,
                    narrow: None,
                });
            }
            Op::TakeLastRows { x, out: o } => {
                let cols = self.cols(*o);
                out.push(Pending {
                    kernel: Kernel::TakeLastRows,
                    format: None,
                    buffers: vec![(1, self.slot(*x)), (3, self.slot(*o))],
                    params: (0, [cols as u32, 0, 0, 0, 0, 0, 0, 0]),
                    grid: Grid::Direct(Extent::Fixed((cols as u32).div_ceil(256)), Extent::Out(1)),
                    needs_out: true,
                    narrow: None,
                });
            }
            Op::MoeRoute {
                logits,
                bias,
                routing,
                ids,
                weights,
            } => {
                let moe = self.moe.expect("MoE scratch exists when the graph routes");
                let bias_buf = bias
                    .map(|b| self.vectors[b.0].clone().expect("uploaded bias"))
                    .unwrap_or(self.dummy.clone());
                // Block routing: one workgroup per routing block, else one invocation per token.
                let (kernel, capacity, block_size, grid) = match routing.block {
                    Some(b) => (
                        Kernel::MoeRouteBlock,
                        b.capacity as u32,
                        b.size as u32,
                        Extent::Tokens(b.size as u32),
                    ),
                    None => (Kernel::MoeRoute, 0, 0, Extent::Tokens(64)),
                };
                out.push(Pending {
                    kernel,
                    format: None,
                    buffers: vec![
                        (1, self.slot(*logits)),
                        (2, bias_buf),
                        (3, moe.scores.clone()),
                        (4, self.slot(*ids)),
                        (5, self.slot(*weights)),
                    ],
                    params: (
                        0,
                        [
                            routing.num_experts as u32,
                            routing.top_k as u32,
                            routing.n_group as u32,
                            routing.topk_group as u32,
                            f(routing.scaling),
                            bias.is_some() as u32,
                            capacity,
                            block_size,
                        ],
                    ),
                    grid: Grid::Direct(grid, Extent::Fixed(1)),
                    needs_out: false,
                    narrow: None,
                });
            }
            Op::MoeExperts {
                x,
                ids,
                weights,
                out: o,
                ..
            } => {
                let moe = self
                    .moe
                    .expect("MoE scratch exists when the graph has experts");
                let ex = self.op_experts[index].as_ref().expect("uploaded experts");
                let top_k = self.cols(*ids);
                let parts = ex.gate_up.len();
                let c = moe.max_parts as u32;
                let items_at = 7 * c;
                out.push(Pending {
                    kernel: Kernel::MoeGroup,
                    format: None,
                    buffers: vec![
                        (11, self.slot(*ids)),
                        (12, ex.bounds_buffer.clone()),
                        (13, moe.counters.clone()),
                        (14, moe.slots.clone()),
                        (15, moe.plan.clone()),
                    ],
                    params: (
                        10,
                        [
                            ex.experts as u32,
                            top_k as u32,
                            parts as u32,
                            TILE_ROWS as u32,
                            ex.inter.div_ceil(TILE_FEATURES) as u32,
                            ex.hidden.div_ceil(2 * TILE_FEATURES) as u32,
                            items_at,
                            moe.slot_cap as u32,
                        ],
                    ),
                    grid: Grid::Direct(Extent::Fixed(1), Extent::Fixed(1)),
                    needs_out: false,
                    narrow: None,
                });
                // The group kernel writes args for `parts` parts: gate/up at 3p, down at 3(P + p),
                // where P is this layer's part count (the plan is read with this layer's layout).
                for p in 0..parts {
                    out.push(Pending {
                        kernel: Kernel::MoeGateUp,
                        format: Some(ex.format),
                        buffers: vec![
                            (1, ex.gate_up[p].clone()),
                            (2, self.slot(*x)),
                            (3, moe.act.clone()),
                            (5, moe.plan.clone()),
                            (6, moe.slots.clone()),
                        ],
                        params: (
                            4,
                            [
                                ex.hidden as u32,
                                ex.gate_up_stride as u32,
                                ex.inter as u32,
                                (2 * ex.inter) as u32,
                                ex.bounds[p],
                                6 * parts as u32 + p as u32,
                                items_at,
                                0,
                            ],
                        ),
                        grid: Grid::Indirect((12 * p) as u64),
                        needs_out: false,
                        narrow: None,
                    });
                }
                for p in 0..parts {
                    out.push(Pending {
                        kernel: Kernel::MoeDown,
                        format: Some(ex.format),
                        buffers: vec![
                            (1, ex.down[p].clone()),
                            (2, moe.act.clone()),
                            (3, moe.y.clone()),
                            (5, moe.plan.clone()),
                            (6, moe.slots.clone()),
                        ],
                        params: (
                            4,
                            [
                                ex.inter as u32,
                                ex.down_stride as u32,
                                ex.hidden as u32,
                                ex.hidden as u32,
                                ex.bounds[p],
                                6 * parts as u32 + p as u32,
                                items_at,
                                0,
                            ],
                        ),
                        grid: Grid::Indirect((12 * (parts + p)) as u64),
                        needs_out: false,
                        narrow: None,
                    });
                }
                out.push(Pending {
                    kernel: Kernel::MoeCombine,
                    format: None,
                    buffers: vec![
                        (11, self.slot(*ids)),
                        (21, self.slot(*weights)),
                        (22, moe.slots.clone()),
                        (23, moe.y.clone()),
                        (24, self.slot(*o)),
                    ],
                    params: (
                        20,
                        [
                            ex.hidden as u32,
                            top_k as u32,
                            moe.slot_cap as u32,
                            0,
                            0,
                            0,
                            0,
                            0,
                        ],
                    ),
                    grid: Grid::Direct(
                        Extent::Fixed((ex.hidden as u32).div_ceil(64)),
                        Extent::Tokens(1),
                    ),
                    needs_out: false,
                    narrow: None,
                });
            }
            Op::Sample { logits, out: o } => {
                let vocab = self.cols(*logits);
                out.push(Pending {
                    kernel: Kernel::Greedy,
                    format: None,
                    buffers: vec![(1, self.slot(*logits)), (2, self.slot(*o))],
                    params: (0, [vocab as u32, 0, 0, 0, 0, 0, 0, 0]),
                    grid: Grid::Direct(Extent::Out(1), Extent::Fixed(1)),
                    needs_out: true,
                    narrow: None,
                });
            }
        }
    }
}

/// The (kernel, format) pairs the graph needs, for building pipelines at load.
pub fn kernels_needed(
    graph: &Graph,
    matrices: &[Option<DeviceMatrix>],
    op_experts: &[Option<ExpertStacks>],
) -> Vec<(Kernel, Option<WeightFormat>)> {
    let mut v = Vec::new();
    for (i, op) in graph.ops.iter().enumerate() {
        match op {
            Op::Embed { table, .. } => {
                v.push((Kernel::Embed, matrices[table.0].as_ref().map(|m| m.format)))
            }
            Op::RmsNorm { .. } => v.push((Kernel::RmsNorm, None)),
            Op::MatMul { weight, .. } => {
                let format = matrices[weight.0].as_ref().map(|m| m.format);
                v.push((Kernel::Matmul, format));
                v.push((Kernel::MatmulNarrow, format));
            }
            Op::QkNormRope { .. } => v.push((Kernel::QkNormRope, None)),
            Op::Attention { .. } => {
                v.push((Kernel::KvStore, None));
                v.push((Kernel::Attention, None));
            }
            Op::Add { .. } => v.push((Kernel::Add, None)),
            Op::SwiGlu { .. } => v.push((Kernel::SwiGlu, None)),
            Op::TakeLastRows { .. } => v.push((Kernel::TakeLastRows, None)),
            Op::MoeRoute { routing, .. } => v.push((
                if routing.block.is_some() {
                    Kernel::MoeRouteBlock
                } else {
                    Kernel::MoeRoute
                },
                None,
            )),
            Op::MoeExperts { .. } => {
                let format = op_experts[i].as_ref().map(|e| e.format);
                v.push((Kernel::MoeGroup, None));
                v.push((Kernel::MoeGateUp, format));
                v.push((Kernel::MoeDown, format));
                v.push((Kernel::MoeCombine, None));
            }
            Op::Sample { .. } => {
                v.push((Kernel::Greedy, None));
                v.push((Kernel::Seeded, None));
            }
        }
    }
    v
}

/// Compiles the graph: parameters into one buffer, one bind group per dispatch.
pub fn compile(cx: &Context) -> Program {
    let mut pending = Vec::new();
    for (i, op) in cx.graph.ops.iter().enumerate() {
        cx.compile_op(i, op, &mut pending);
    }
    let align = cx.params_align.max(32) as usize;
    let mut blob = vec![0u8; pending.len().max(1) * align];
    for (i, p) in pending.iter().enumerate() {
        blob[i * align..i * align + 32].copy_from_slice(bytemuck::cast_slice(&p.params.1));
    }
    let params = cx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("op_params"),
        size: blob.len() as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: true,
    });
    params
        .slice(..)
        .get_mapped_range_mut()
        .expect("a buffer mapped at creation can be written")
        .copy_from_slice(&blob);
    params.unmap();

    let bind = |kernel: Kernel, p: &Pending, i: usize| {
        let pl = cx.kernels.get(kernel, p.format);
        let mut entries: Vec<wgpu::BindGroupEntry> = p
            .buffers
            .iter()
            .map(|(binding, b)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: p.params.0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &params,
                offset: (i * align) as u64,
                size: wgpu::BufferSize::new(32),
            }),
        });
        let bg = cx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry()),
            layout: &pl.layout,
            entries: &entries,
        });
        (pl.pipeline.clone(), bg)
    };

    let dispatches = pending
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (pipeline, bind_group) = bind(p.kernel, p, i);
            let seeded = (p.kernel == Kernel::Greedy).then(|| bind(Kernel::Seeded, p, i));
            let narrow = p.narrow.map(|(grid, rows)| {
                let (pl, bg) = bind(Kernel::MatmulNarrow, p, i);
                (pl, bg, grid, rows)
            });
            Dispatch {
                kernel: p.kernel,
                pipeline,
                bind_group,
                seeded,
                narrow,
                grid: p.grid,
                needs_out: p.needs_out,
            }
        })
        .collect();
    Program { dispatches, params }
}

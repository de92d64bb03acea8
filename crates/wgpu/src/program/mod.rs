//! The graph compiled for the device: every op becomes one or more dispatches with their
//! pipeline, a bind group made at load, and a grid that depends only on the pass's shape
//! (`PassShape`: its row counts and sequences). A step replays this list once per pass (a chunk
//! of one sequence's step, or the windows of several sequences), changing nothing but the
//! dynamic offset of the pass parameters. Built again only when the KV cache grows (its buffers
//! are in the bind groups).

pub(crate) mod attention;
mod elementwise;
mod embed;
pub(crate) mod fuse;
pub(crate) mod int8;
mod matmul;
mod moe;
mod norm;
mod rope;
mod sample;

use crate::arena::ArenaPlan;
use crate::format::WeightFormat;
use crate::kernels::{Kernel, Kernels};
use crate::kv::KvCache;
use crate::shaders::EXPERT_PART_BINDING;
use crate::weights::{DeviceMatrix, ExpertStacks};
use unmask_core::graph::{BufId, Graph, Op, OpFamily, Rows, WeightId};

/// Rows and features of the dense tiles (BM, BN in matmul.wgsl). Expert work items hold at
/// most TILE_ROWS rows (gate/up tiles TILE_FEATURES wide, down tiles 2 * TILE_FEATURES wide)
/// and compute them 8 at a time. Products over at most 32 rows use the matrix-vector kernels
/// (`shaders::MATVECS`) instead of the tiles.
pub const TILE_ROWS: usize = 32;
pub const TILE_FEATURES: usize = 32;

/// Words of the MoE plan buffer per expert dispatch before the work items: four kernels'
/// indirect arguments (tiled gate/up and down, matrix-vector gate/up and down) and its first
/// work item (moe.wgsl's `moe_group` lays them out).
pub const PLAN_HEAD: usize = 13;

/// What a pass's dispatches depend on: its rows and predicted rows, its sequences, the most
/// rows and predicted rows of one of them (the matrix kernels are chosen by these, so that a
/// sequence's rows take the kernels they take alone), and whether any samples with a
/// temperature. Commands recorded for one shape serve any pass of that shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassShape {
    pub rows: usize,
    pub out: usize,
    pub seqs: usize,
    pub widest: (usize, usize),
    pub seeded: bool,
    /// Whether a row of the pass may see more than `attention::SPLIT_KEYS` keys (a sequence
    /// reaches past that position): the attention then takes split-KV.
    pub long_kv: bool,
}

/// One dimension of a dispatch grid.
#[derive(Debug, Clone, Copy)]
pub enum Extent {
    Fixed(u32),
    /// ceil(pass tokens / per)
    Tokens(u32),
    /// ceil(pass predicted rows / per)
    Out(u32),
    /// Enough for every sequence's blocks of `per` rows (each sequence starts a block).
    Blocks(u32),
}

/// What picks a dispatch's variant in a pass: the rows of its widest sequence (a matrix
/// product's matrix-vector kernels, the first whose `max_rows` fits), or whether the pass is
/// `long_kv` (split-KV's kernels, taken by any long pass).
#[derive(Debug, Clone, Copy)]
pub enum Choice {
    Rows(Extent),
    LongKv,
}

impl Choice {
    /// The variant of `variants` (by their `max_rows`) a pass of shape `c` takes, if any.
    pub fn pick<'a, T>(
        self,
        c: &PassShape,
        variants: &'a [T],
        max_rows: impl Fn(&T) -> usize,
    ) -> Option<&'a T> {
        match self {
            Choice::Rows(rows) => {
                let n = rows.widest(c);
                variants.iter().find(|v| n <= max_rows(v))
            }
            Choice::LongKv => variants.first().filter(|_| c.long_kv),
        }
    }
}

impl Extent {
    fn of(rows: Rows, per: usize) -> Extent {
        match rows {
            Rows::Tokens => Extent::Tokens(per as u32),
            Rows::Out => Extent::Out(per as u32),
        }
    }

    pub fn resolve(self, pass: &PassShape) -> u32 {
        let (n, out) = (pass.rows as u32, pass.out as u32);
        match self {
            Extent::Fixed(v) => v,
            Extent::Tokens(per) => n.div_ceil(per),
            Extent::Out(per) => out.div_ceil(per),
            Extent::Blocks(per) => n.div_ceil(per) + pass.seqs.saturating_sub(1) as u32,
        }
    }

    /// The rows of one sequence that choose a matrix kernel: the pass's widest.
    pub fn widest(self, pass: &PassShape) -> usize {
        match self {
            Extent::Out(_) => pass.widest.1,
            _ => pass.widest.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Grid {
    Direct(Extent, Extent),
    /// Arguments written on the device, at this byte offset of the MoE plan buffer.
    Indirect(u64),
}

/// A kernel a matrix product uses for at most `max_rows` rows.
pub struct SmallVariant {
    pub max_rows: usize,
    pub kernel: Kernel,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub grid: Grid,
}

pub struct Dispatch {
    pub kernel: Kernel,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    /// The seeded sampler, used instead when the step samples with a temperature.
    pub seeded: Option<(wgpu::ComputePipeline, wgpu::BindGroup)>,
    /// For a matrix product: the extent that counts its rows, and the matrix-vector kernels
    /// used instead when there are at most that many (the first that fits).
    pub small: Option<(Choice, Vec<SmallVariant>)>,
    pub grid: Grid,
    /// Runs only when the chunk predicts rows (the head of the model).
    pub needs_out: bool,
    /// The graph op it computes (a part of): profiles add times up per op family.
    pub op: usize,
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
    /// Expert dispatches of the most split layer (the plan is laid out for that many).
    pub max_dispatches: usize,
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
    /// The arena's bins (device buffers shared by graph buffers of disjoint lifetimes).
    pub bins: &'a [wgpu::Buffer],
    pub ids: &'a wgpu::Buffer,
    /// Matrices by weight id (embedding tables and linear layers).
    pub matrices: &'a [Option<DeviceMatrix>],
    /// Vectors by weight id.
    pub vectors: &'a [Option<wgpu::Buffer>],
    /// Per op: the expert stacks of `MoeExperts`, the [q norm; k norm] buffer of `QkNormRope`.
    pub op_experts: &'a [Option<ExpertStacks>],
    pub op_norms: &'a [Option<wgpu::Buffer>],
    /// Bound where a kernel reads nothing (read-only bindings only).
    pub dummy: &'a wgpu::Buffer,
    /// Bound where a kernel writes nothing: two buffers of their own, as WebGPU forbids two
    /// writable bindings of one buffer, or one buffer bound both read-only and writable.
    pub spare: &'a [wgpu::Buffer; 2],
    pub kv: &'a KvCache,
    pub moe: Option<&'a MoeScratch>,
    /// Split-KV partials of the attention (none where they would not fit a binding).
    pub attn_parts: Option<&'a wgpu::Buffer>,
    pub params_align: u64,
    /// Expert-stack bindings an expert dispatch reads (the kernels' layout binds this many).
    pub expert_parts: usize,
    /// Split-KV workgroups take blocks of rows (`WgpuOptions::split_row_blocks`).
    pub split_row_blocks: bool,
    pub fusions: &'a fuse::Fusions,
    /// Quantized activation rows of the integer matrix-vector kernels (`int8.rs`), when the
    /// backend uses them (`WgpuOptions::int8_dots`).
    pub xq: Option<&'a wgpu::Buffer>,
    /// The products whose input's writer quantizes it (`int8.rs`).
    pub folds: &'a int8::Folds,
}

/// The extent that counts a product's rows, and (most rows, kernel, grid) of each kernel used
/// instead of the tiles for at most that many.
type SmallGrids = (Choice, Vec<(usize, Kernel, Grid)>);

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
    /// For `matmul`: the extent that counts the rows, and (most rows, kernel, grid) of the
    /// kernels used instead for few rows.
    small: Option<SmallGrids>,
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
    fn buffer_of(&self, b: BufId) -> wgpu::Buffer {
        if b == self.graph.input_ids {
            return self.ids.clone();
        }
        let s = self.arena.bin_of[b.0].expect("every written buffer has a bin");
        self.bins[s].clone()
    }

    fn rows(&self, b: BufId) -> Rows {
        self.graph.buffer(b).rows
    }

    fn cols(&self, b: BufId) -> usize {
        self.graph.buffer(b).cols
    }

    /// The op handed to its family's module: a new op of an existing family touches only
    /// that module.
    fn compile_op(&self, index: usize, op: &Op, out: &mut Vec<Pending>) {
        (Family::of(op.family()).lower)(self, index, op, out)
    }
}

/// What a family's module provides: its ops' dispatches, and the pipelines they need.
struct Family {
    lower: fn(&Context, usize, &Op, &mut Vec<Pending>),
    kernels: fn(&Op, &mut Needs),
}

impl Family {
    /// The one place that names every family's module.
    fn of(f: OpFamily) -> Family {
        macro_rules! family {
            ($m:ident) => {
                Family {
                    lower: $m::lower,
                    kernels: $m::kernels,
                }
            };
        }
        match f {
            OpFamily::Embed => family!(embed),
            OpFamily::Norm => family!(norm),
            OpFamily::MatMul => family!(matmul),
            OpFamily::Rope => family!(rope),
            OpFamily::Attention => family!(attention),
            OpFamily::Elementwise => family!(elementwise),
            OpFamily::Moe => family!(moe),
            OpFamily::Sample => family!(sample),
        }
    }
}

/// The (kernel, weight format) pairs a graph's ops need, gathered by the family modules.
pub struct Needs<'a> {
    fusions: &'a fuse::Fusions,
    folds: &'a int8::Folds,
    matrices: &'a [Option<DeviceMatrix>],
    op_experts: &'a [Option<ExpertStacks>],
    /// The op being asked about.
    index: usize,
    /// Whether q8_0 / q4 products take the integer kernels where they can (`int8.rs`).
    int8: bool,
    list: Vec<(Kernel, Option<WeightFormat>)>,
}

impl Needs<'_> {
    fn push(&mut self, kernel: Kernel, format: Option<WeightFormat>) {
        self.list.push((kernel, format));
    }

    /// The stored format of a matrix or table (`None` before it is uploaded).
    fn matrix_format(&self, w: WeightId) -> Option<WeightFormat> {
        self.matrices[w.0].as_ref().map(|m| m.format)
    }

    /// The stored format of the op's expert stacks.
    fn experts_format(&self) -> Option<WeightFormat> {
        self.op_experts[self.index].as_ref().map(|e| e.format)
    }

    /// Whether a matrix can take the integer kernels.
    fn matrix_int8(&self, w: WeightId) -> bool {
        self.matrices[w.0]
            .as_ref()
            .is_some_and(|m| int8::eligible(m.format, m.cols))
    }

    /// Whether the op's dispatches quantize what they write (its `_q` kernels, `int8::Folds`).
    fn quantizes(&self) -> bool {
        self.folds.quantizes[self.index]
    }

    /// Whether the op's input arrives quantized (it has no quantize dispatch).
    fn prequantized(&self) -> bool {
        self.folds.prequantized[self.index]
    }

    /// Whether the op's experts can take the integer kernels.
    fn experts_int8(&self) -> bool {
        self.op_experts[self.index]
            .as_ref()
            .is_some_and(int8::experts_eligible)
    }
}

/// Whether op `i` would take the integer form over its input (`int8.rs`; where the backend
/// quantizes): a q8_0 / q4 product, or experts whose matrix-vector form can be dispatched.
pub fn takes_int8(
    graph: &Graph,
    matrices: &[Option<DeviceMatrix>],
    op_experts: &[Option<ExpertStacks>],
    i: usize,
) -> bool {
    match &graph.ops[i] {
        Op::MatMul { weight, .. } => matrices[weight.0]
            .as_ref()
            .is_some_and(|m| int8::eligible(m.format, m.cols)),
        Op::MoeExperts { .. } => op_experts[i]
            .as_ref()
            .is_some_and(|ex| moe::matvec_fits(ex) && int8::experts_eligible(ex)),
        _ => false,
    }
}

/// The (kernel, format) pairs the graph needs, for building pipelines at load (`int8`: the
/// integer forms too, where a product can take them).
pub fn kernels_needed(
    graph: &Graph,
    fusions: &fuse::Fusions,
    folds: &int8::Folds,
    matrices: &[Option<DeviceMatrix>],
    op_experts: &[Option<ExpertStacks>],
    int8: bool,
) -> Vec<(Kernel, Option<WeightFormat>)> {
    let mut needs = Needs {
        fusions,
        folds,
        matrices,
        op_experts,
        index: 0,
        int8,
        list: Vec::new(),
    };
    for (i, op) in graph.ops.iter().enumerate() {
        if fusions.absorbed(i) {
            continue;
        }
        needs.index = i;
        (Family::of(op.family()).kernels)(op, &mut needs);
    }
    needs.list
}

/// Panics when `p` binds one buffer twice and either binding is writable: WebGPU refuses such
/// a dispatch, and wgpu's native validation lets it through, so every lowering is checked here
/// (the op and golden suites compile every kind of dispatch).
fn check_aliasing(p: &Pending) {
    let writable = |binding: u32| {
        p.kernel
            .bindings()
            .iter()
            .any(|&(b, u)| b == binding && u == crate::kernels::Bind::ReadWrite)
    };
    for (i, (b1, x)) in p.buffers.iter().enumerate() {
        for (b2, y) in &p.buffers[i + 1..] {
            assert!(
                x != y || !(writable(*b1) || writable(*b2)),
                "{:?} binds one buffer at {b1} and {b2}, one of them writable",
                p.kernel
            );
        }
    }
}

/// Compiles the graph: parameters into one buffer, one bind group per dispatch.
pub fn compile(cx: &Context) -> Program {
    let mut pending = Vec::new();
    let mut op_of = Vec::new();
    for (i, op) in cx.graph.ops.iter().enumerate() {
        if !cx.fusions.absorbed(i) {
            cx.compile_op(i, op, &mut pending);
            op_of.resize(pending.len(), i);
        }
    }
    pending.iter().for_each(check_aliasing);
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
        // The variants of one dispatch share its buffers; each binds those its layout has.
        let declared = |b: u32| {
            kernel.bindings().iter().any(|&(k, _)| k == b)
                || (kernel.reads_expert_parts() && b > EXPERT_PART_BINDING)
        };
        let mut entries: Vec<wgpu::BindGroupEntry> = p
            .buffers
            .iter()
            .filter(|(binding, _)| declared(*binding))
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
            let seeded = (p.kernel == Kernel::Sample).then(|| bind(Kernel::SampleSeeded, p, i));
            let small = p.small.as_ref().map(|(rows, variants)| {
                let variants = variants
                    .iter()
                    .map(|&(max_rows, kernel, grid)| {
                        let (pipeline, bind_group) = bind(kernel, p, i);
                        SmallVariant {
                            max_rows,
                            kernel,
                            pipeline,
                            bind_group,
                            grid,
                        }
                    })
                    .collect();
                (*rows, variants)
            });
            Dispatch {
                kernel: p.kernel,
                pipeline,
                bind_group,
                seeded,
                small,
                grid: p.grid,
                needs_out: p.needs_out,
                op: op_of[i],
            }
        })
        .collect();
    Program { dispatches, params }
}

//! The graph compiled for one step shape: each op becomes one or more fully resolved kernel
//! launches (pointers, sizes, grids). The argument lists follow the kernels' signatures in
//! kernels/*.cu one for one. Per-step scalars (start position, block length, sampling) are not
//! here: kernels read them from the params buffer, so a recorded list stays valid for every step
//! of the same token count.

mod attention;
mod elementwise;
mod embed;
mod matmul;
mod moe;
mod norm;
mod rope;
mod sample;

use crate::availability::cuda_error;
use crate::device::{Arg, Launch};
use crate::weights::DeviceWeights;
use unmask_core::backend::SAMPLE_WORDS;
use unmask_core::graph::{BufId, Graph, Heads, Op, OpFamily, Routing, Rows, WeightId};
use unmask_core::Result;

/// Threads of the elementwise kernels.
const EW: u32 = 256;
/// Weight rows per block of the matmul kernels (MM_WARPS * MM_ROWS in matmul.cu) and of
/// moe_gate_up (MM_WARPS * MOE_ROWS in moe.cu); tokens per matmul tile (MM_TOK).
const MM_BLOCK_ROWS: usize = 32;
const GATE_UP_BLOCK_ROWS: usize = 16;
const MM_TOK: usize = 8;
const MM_THREADS: u32 = 256;
/// ATT_WARPS * 32 in attention.cu; SAMPLE_THREADS in sample.cu.
const ATT_THREADS: u32 = 128;
const SAMPLE_THREADS: u32 = 1024;
/// ROUTE_BLOCK_THREADS in moe.cu.
const ROUTE_BLOCK_THREADS: u32 = 1024;
/// MAX_HEAD_DIM and MAX_TOP_K in common.cuh.
pub const MAX_HEAD_DIM: usize = 256;
pub const MAX_TOP_K: usize = 32;
/// moe_group runs one block with a thread per expert (up to this many).
pub const MAX_EXPERTS: usize = 1024;

/// Device addresses a recorded step reads and writes.
pub struct Bindings<'a> {
    pub graph: &'a Graph,
    pub weights: &'a DeviceWeights,
    /// Per graph buffer.
    pub buffers: &'a [u64],
    pub params: u64,
    /// Per layer: K and V caches.
    pub kv: &'a [(u64, u64)],
    /// Per op index: the rope frequencies of a QkNormRope op (0 elsewhere).
    pub inv_freq: &'a [u64],
    pub moe: MoeScratch,
}

/// Scratch of the grouped expert kernels, shared by every MoE layer (they run in turn).
#[derive(Debug, Clone, Copy)]
pub struct MoeScratch {
    /// `[E + 1]` u32.
    pub offsets: u64,
    /// `[E]` u32.
    pub active: u64,
    /// `[1]` u32.
    pub num_active: u64,
    /// `[tokens * top_k]` u32.
    pub pairs: u64,
    /// `[tokens * top_k, inter]` f32.
    pub act: u64,
    /// `[tokens * top_k, hidden]` f32.
    pub ys: u64,
}

fn grid1(count: usize) -> (u32, u32, u32) {
    (count.div_ceil(EW as usize).max(1) as u32, 1, 1)
}

fn launch(kernel: impl Into<String>, grid: (u32, u32, u32), block: u32, args: Vec<Arg>) -> Launch {
    Launch {
        kernel: kernel.into(),
        grid,
        block: (block, 1, 1),
        shared_bytes: 0,
        args,
        op: 0,
    }
}

/// What every op's recording reads: the step's bindings and row counts.
pub struct Rec<'a> {
    pub b: &'a Bindings<'a>,
    /// Window tokens and predicted rows of the step.
    pub n: usize,
    pub out: usize,
}

impl Rec<'_> {
    /// Rows of buffer `id` in this step.
    fn rows(&self, id: BufId) -> usize {
        match self.b.graph.buffer(id).rows {
            Rows::Tokens => self.n,
            Rows::Out => self.out,
        }
    }

    /// The device address of buffer `id`, as a launch argument.
    fn ptr(&self, id: BufId) -> Arg {
        Arg::Ptr(self.b.buffers[id.0])
    }
}

fn u(v: usize) -> Arg {
    Arg::U32(v as u32)
}

/// Launches of one step over `n` tokens predicting the last `out` of them: each op handed to
/// its family's module.
pub fn record(b: &Bindings, n: usize, out: usize) -> Result<Vec<Launch>> {
    let rec = Rec { b, n, out };
    let mut ls = Vec::new();
    for (oi, op) in b.graph.ops.iter().enumerate() {
        let record = match op.family() {
            OpFamily::Embed => embed::record,
            OpFamily::Norm => norm::record,
            OpFamily::MatMul => matmul::record,
            OpFamily::Rope => rope::record,
            OpFamily::Attention => attention::record,
            OpFamily::Elementwise => elementwise::record,
            OpFamily::Moe => moe::record,
            OpFamily::Sample => sample::record,
        };
        if out == 0 && predicts(b.graph, op) {
            continue;
        }
        let before = ls.len();
        record(&rec, oi, op, &mut ls)?;
        for l in &mut ls[before..] {
            l.op = oi;
        }
    }
    Ok(ls)
}

/// Whether `op` writes predicted rows (the tail: last rows, final norm, lm_head, sampling),
/// which a chunk predicting nothing skips: a launch over zero rows is not a valid launch.
pub fn predicts(g: &Graph, op: &Op) -> bool {
    op.writes().iter().any(|b| g.buffer(*b).rows == Rows::Out)
}

/// Dynamic shared memory of moe_route: (3E + G) floats and (E + G) u32 flags.
pub fn route_shared_bytes(experts: usize, groups: usize) -> usize {
    (3 * experts + groups) * 4 + (experts + groups) * 4
}

/// Dynamic shared memory of moe_route_block: E floats (block maxima) and E u32 flags (allowed).
pub fn route_block_shared_bytes(experts: usize) -> usize {
    experts * 4 + experts * 4
}

/// Limits the kernels assume, checked once at load.
/// Whether the CUDA kernels can run `op` of `g` (`Err(why)` past one of their limits).
pub fn supports(g: &Graph, op: &Op) -> std::result::Result<(), String> {
    match op {
        Op::QkNormRope { heads, .. } | Op::Attention { heads, .. } => {
            if heads.dim > MAX_HEAD_DIM {
                return Err(format!(
                    "head_dim {} is above the CUDA kernels' limit of {MAX_HEAD_DIM}",
                    heads.dim
                ));
            }
            if heads.kv == 0 || heads.q % heads.kv != 0 {
                return Err(format!(
                    "{} query heads do not share {} KV heads evenly",
                    heads.q, heads.kv
                ));
            }
        }
        Op::MoeRoute { routing, .. }
            if routing.num_experts > MAX_EXPERTS || routing.top_k > MAX_TOP_K =>
        {
            return Err(format!(
                "{} experts with top-{} routing is beyond the CUDA kernels' limits \
                     ({MAX_EXPERTS} experts, top-{MAX_TOP_K})",
                routing.num_experts, routing.top_k
            ));
        }
        // Both routing kernels assume a pick always exists, and block routing a block of
        // at least one row.
        Op::MoeRoute { routing, .. }
            if routing.top_k > routing.num_experts
                || routing.block.is_some_and(|b| b.size == 0) =>
        {
            return Err(format!("unsupported routing {routing:?}"));
        }
        Op::MatMul { weight, .. }
            if matrix_rows(g, *weight) > matmul::MAX_GRID_Y * MM_BLOCK_ROWS =>
        {
            return Err(format!(
                "a matrix of {} rows is beyond the CUDA matmul's {} (its row blocks fill grid.y)",
                matrix_rows(g, *weight),
                matmul::MAX_GRID_Y * MM_BLOCK_ROWS
            ));
        }
        Op::Sample { out, .. } if g.buffer(*out).cols != SAMPLE_WORDS => {
            return Err(format!(
                "the samples buffer has {} words a row; the sample kernel writes \
                     {SAMPLE_WORDS}",
                g.buffer(*out).cols
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Output rows of a `[rows, cols]` weight.
fn matrix_rows(g: &Graph, w: WeightId) -> usize {
    g.weight(w).shape.first().copied().unwrap_or(0)
}

/// Every op of `g` the kernels can run, or the first one they cannot, as a CUDA error.
pub fn check_limits(g: &Graph) -> Result<()> {
    for op in &g.ops {
        supports(g, op).map_err(cuda_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::SOURCES;
    use unmask_core::graph::{BlockRouting, Elem, GraphBuilder, Routing, Rows};

    fn source(name: &str) -> &'static str {
        SOURCES.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// The launch constants here and the kernels' `#define`s must agree.
    #[test]
    fn launch_constants_match_the_kernels() {
        for (file, name, value) in [
            ("sample.cu", "SAMPLE_THREADS", SAMPLE_THREADS as usize),
            ("sample.cu", "SAMPLE_WORDS", SAMPLE_WORDS),
            (
                "moe.cu",
                "ROUTE_BLOCK_THREADS",
                ROUTE_BLOCK_THREADS as usize,
            ),
            ("common.cuh", "MAX_TOP_K", MAX_TOP_K),
            ("common.cuh", "MAX_HEAD_DIM", MAX_HEAD_DIM),
        ] {
            let line = format!("#define {name} {value}\n");
            assert!(
                source(file).contains(&line),
                "{file} lacks `{}`",
                line.trim()
            );
        }
        assert_eq!(unmask_core::backend::NO_TOKEN, 0xffff_ffff);
        assert!(source("sample.cu").contains("#define NO_TOKEN 0xffffffffu\n"));
    }

    fn route_graph(routing: Routing, sample_words: usize) -> Graph {
        let mut b = GraphBuilder::default();
        let ids_in = b.buffer("ids_in", Rows::Tokens, 1, Elem::U32);
        let logits = b.f32("logits", Rows::Tokens, routing.num_experts);
        let ids = b.buffer("ids", Rows::Tokens, routing.top_k, Elem::U32);
        let weights = b.f32("w", Rows::Tokens, routing.top_k);
        let samples = b.buffer("samples", Rows::Out, sample_words, Elem::U32);
        b.op(Op::MoeRoute {
            logits,
            bias: None,
            routing,
            ids,
            weights,
        });
        b.op(Op::Sample {
            logits,
            out: samples,
        });
        Graph {
            buffers: b.buffers,
            weights: b.weights,
            ops: b.ops,
            input_ids: ids_in,
            logits,
            samples,
            hidden: vec![],
            num_layers: 0,
        }
    }

    #[test]
    fn limits_reject_what_the_kernels_cannot_route_or_sample() {
        let r = Routing {
            num_experts: 64,
            top_k: 8,
            n_group: 1,
            topk_group: 1,
            scaling: 1.0,
            block: Some(BlockRouting {
                size: 32,
                capacity: 16,
            }),
        };
        assert!(check_limits(&route_graph(r, SAMPLE_WORDS)).is_ok());
        assert!(check_limits(&route_graph(r, 2)).is_err());
        let mut bad = r;
        bad.block = Some(BlockRouting {
            size: 0,
            capacity: 16,
        });
        assert!(check_limits(&route_graph(bad, SAMPLE_WORDS)).is_err());
        let mut bad = r;
        bad.num_experts = 4;
        assert!(check_limits(&route_graph(bad, SAMPLE_WORDS)).is_err());
        let mut big = r;
        big.num_experts = MAX_EXPERTS + 1;
        assert!(check_limits(&route_graph(big, SAMPLE_WORDS)).is_err());
        assert_eq!(route_block_shared_bytes(256), 2048);
    }

    /// A chunk that predicts nothing runs the layers and skips exactly the tail.
    #[test]
    fn a_chunk_without_predicted_rows_skips_only_the_tail() {
        let c = unmask_core::synthetic::shape_config("tiny").unwrap();
        let g = unmask_core::model::llada2::build(&c);
        let skipped: Vec<String> = g
            .ops
            .iter()
            .filter(|op| predicts(&g, op))
            .map(|op| format!("{:?}", op.family()))
            .collect();
        assert_eq!(
            skipped,
            ["Elementwise", "Norm", "MatMul", "Sample"],
            "{skipped:?}"
        );
        let last_layer_op = g
            .ops
            .iter()
            .rposition(|op| matches!(op, Op::Attention { .. } | Op::MoeExperts { .. }))
            .unwrap();
        let first_skipped = g.ops.iter().position(|op| predicts(&g, op)).unwrap();
        assert!(first_skipped > last_layer_op);
    }
}

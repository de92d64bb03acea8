//! The graph compiled for one step shape: each op becomes one or more fully resolved kernel
//! launches (pointers, sizes, grids). The argument lists follow the kernels' signatures in
//! kernels/*.cu one for one. Per-step scalars (start position, block length, sampling) are not
//! here: kernels read them from the params buffer, so a recorded list stays valid for every step
//! of the same token count.

use crate::availability::cuda_error;
use crate::device::{Arg, Launch};
use crate::weights::DeviceWeights;
use unmask_core::backend::SAMPLE_WORDS;
use unmask_core::graph::{BufId, Graph, Op};
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
/// moe_bucket runs one block with a thread per expert (up to this many).
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
    }
}

/// Launches of one step over `n` tokens predicting the last `out` of them.
pub fn record(b: &Bindings, n: usize, out: usize) -> Result<Vec<Launch>> {
    let g = b.graph;
    let rows = |id: BufId| match g.buffer(id).rows {
        unmask_core::graph::Rows::Tokens => n,
        unmask_core::graph::Rows::Out => out,
    };
    let ptr = |id: BufId| Arg::Ptr(b.buffers[id.0]);
    let u = |v: usize| Arg::U32(v as u32);
    let mut ls = Vec::new();
    for (oi, op) in g.ops.iter().enumerate() {
        match op {
            Op::Embed { ids, table, out: o } => {
                let t = b.weights.matrix(*table)?;
                ls.push(launch(
                    format!("embed_{}", t.format.suffix()),
                    (t.cols.div_ceil(EW as usize) as u32, n as u32, 1),
                    EW,
                    vec![ptr(*ids), Arg::Ptr(t.ptr), u(t.rows), u(t.cols), ptr(*o)],
                ));
            }
            Op::RmsNorm {
                x,
                weight,
                out: o,
                eps,
            } => {
                let (w, d) = b.weights.vector(*weight)?;
                let groups = rows(*x) * g.buffer(*x).cols / d;
                ls.push(launch(
                    "rms_norm",
                    (groups as u32, 1, 1),
                    EW,
                    vec![ptr(*x), Arg::Ptr(w), ptr(*o), u(d), Arg::F32(*eps)],
                ));
            }
            Op::MatMul { x, weight, out: o } => {
                let w = b.weights.matrix(*weight)?;
                let m = rows(*x);
                ls.push(launch(
                    format!("matmul_{}", w.format.suffix()),
                    (
                        w.rows.div_ceil(MM_BLOCK_ROWS) as u32,
                        m.div_ceil(MM_TOK) as u32,
                        1,
                    ),
                    MM_THREADS,
                    vec![
                        ptr(*x),
                        Arg::Ptr(w.ptr),
                        ptr(*o),
                        u(m),
                        u(w.cols),
                        u(w.rows),
                    ],
                ));
            }
            Op::QkNormRope {
                qkv,
                q_norm,
                k_norm,
                heads,
                rot_dim,
                eps,
                ..
            } => {
                let norm = |w: &Option<unmask_core::graph::WeightId>| -> Result<Arg> {
                    Ok(Arg::Ptr(match w {
                        Some(w) => b.weights.vector(*w)?.0,
                        None => 0,
                    }))
                };
                ls.push(launch(
                    "qk_norm_rope",
                    (n as u32, (heads.q + heads.kv) as u32, 1),
                    32,
                    vec![
                        ptr(*qkv),
                        norm(q_norm)?,
                        norm(k_norm)?,
                        Arg::Ptr(b.inv_freq[oi]),
                        Arg::Ptr(b.params),
                        u(heads.q),
                        u(heads.kv),
                        u(heads.dim),
                        u(rot_dim / 2),
                        Arg::F32(*eps),
                    ],
                ));
            }
            Op::Attention {
                qkv,
                layer,
                heads,
                out: o,
            } => {
                let (k, v) = b.kv[*layer];
                ls.push(launch(
                    "kv_store",
                    (n as u32, 1, 1),
                    EW,
                    vec![
                        ptr(*qkv),
                        Arg::Ptr(k),
                        Arg::Ptr(v),
                        Arg::Ptr(b.params),
                        u(heads.q),
                        u(heads.kv),
                        u(heads.dim),
                    ],
                ));
                ls.push(launch(
                    "attention",
                    (n as u32, heads.q as u32, 1),
                    ATT_THREADS,
                    vec![
                        ptr(*qkv),
                        Arg::Ptr(k),
                        Arg::Ptr(v),
                        ptr(*o),
                        Arg::Ptr(b.params),
                        u(n),
                        u(heads.q),
                        u(heads.kv),
                        u(heads.dim),
                    ],
                ));
            }
            Op::Add { a, b: bb, out: o } => {
                let count = rows(*o) * g.buffer(*o).cols;
                ls.push(launch(
                    "add",
                    grid1(count),
                    EW,
                    vec![ptr(*a), ptr(*bb), ptr(*o), u(count)],
                ));
            }
            Op::SwiGlu { gate, up, out: o } => {
                let count = rows(*o) * g.buffer(*o).cols;
                ls.push(launch(
                    "swiglu",
                    grid1(count),
                    EW,
                    vec![ptr(*gate), ptr(*up), ptr(*o), u(count)],
                ));
            }
            Op::MoeRoute {
                logits,
                bias,
                routing: r,
                ids,
                weights,
            } => {
                let bias = match bias {
                    Some(w) => b.weights.vector(*w)?.0,
                    None => 0,
                };
                let l = match r.block {
                    // Rows of routing block b are rows b * size.. of the step: the backend
                    // checks that a step starts on a routing block boundary.
                    Some(blk) => {
                        let rows = rows(*logits);
                        let mut l = launch(
                            "moe_route_block",
                            (rows.div_ceil(blk.size).max(1) as u32, 1, 1),
                            ROUTE_BLOCK_THREADS,
                            vec![
                                ptr(*logits),
                                Arg::Ptr(bias),
                                ptr(*ids),
                                ptr(*weights),
                                u(rows),
                                u(r.num_experts),
                                u(r.top_k),
                                u(blk.size),
                                u(blk.capacity),
                                Arg::F32(r.scaling),
                            ],
                        );
                        l.shared_bytes = route_block_shared_bytes(r.num_experts) as u32;
                        l
                    }
                    None => {
                        let mut l = launch(
                            "moe_route",
                            (n as u32, 1, 1),
                            32,
                            vec![
                                ptr(*logits),
                                Arg::Ptr(bias),
                                ptr(*ids),
                                ptr(*weights),
                                u(r.num_experts),
                                u(r.top_k),
                                u(r.n_group),
                                u(r.topk_group),
                                Arg::F32(r.scaling),
                            ],
                        );
                        l.shared_bytes = route_shared_bytes(r.num_experts, r.n_group) as u32;
                        l
                    }
                };
                ls.push(l);
            }
            Op::MoeExperts {
                x,
                ids,
                weights,
                out: o,
                ..
            } => {
                let st = b.weights.stacks.get(&oi).ok_or_else(|| {
                    cuda_error(format!("op {oi}: MoE experts were not uploaded as a stack"))
                })?;
                let top_k = g.buffer(*ids).cols;
                let pairs = n * top_k;
                let e = st.count;
                let m = &b.moe;
                let mut bucket = launch(
                    "moe_bucket",
                    (1, 1, 1),
                    (e.div_ceil(32) * 32).min(MAX_EXPERTS) as u32,
                    vec![
                        ptr(*ids),
                        u(pairs),
                        u(e),
                        Arg::Ptr(m.offsets),
                        Arg::Ptr(m.active),
                        Arg::Ptr(m.num_active),
                        Arg::Ptr(m.pairs),
                    ],
                );
                bucket.shared_bytes = (e * 4) as u32;
                ls.push(bucket);
                // One grid row per possibly active expert; surplus rows return at once.
                let slots = e.min(pairs) as u32;
                ls.push(launch(
                    format!("moe_gate_up_{}", st.gate_up_format.suffix()),
                    (st.inter.div_ceil(GATE_UP_BLOCK_ROWS) as u32, slots, 1),
                    MM_THREADS,
                    vec![
                        ptr(*x),
                        Arg::Ptr(st.gate),
                        Arg::Ptr(st.up),
                        Arg::U64(st.gate_up_stride),
                        Arg::Ptr(m.offsets),
                        Arg::Ptr(m.active),
                        Arg::Ptr(m.num_active),
                        Arg::Ptr(m.pairs),
                        Arg::Ptr(m.act),
                        u(top_k),
                        u(st.hidden),
                        u(st.inter),
                    ],
                ));
                ls.push(launch(
                    format!("moe_down_{}", st.down_format.suffix()),
                    (st.hidden.div_ceil(MM_BLOCK_ROWS) as u32, slots, 1),
                    MM_THREADS,
                    vec![
                        Arg::Ptr(m.act),
                        Arg::Ptr(st.down),
                        Arg::U64(st.down_stride),
                        Arg::Ptr(m.offsets),
                        Arg::Ptr(m.active),
                        Arg::Ptr(m.num_active),
                        Arg::Ptr(m.pairs),
                        Arg::Ptr(m.ys),
                        u(st.inter),
                        u(st.hidden),
                    ],
                ));
                ls.push(launch(
                    "moe_combine",
                    (st.hidden.div_ceil(EW as usize) as u32, n as u32, 1),
                    EW,
                    vec![
                        Arg::Ptr(m.ys),
                        ptr(*ids),
                        ptr(*weights),
                        ptr(*o),
                        u(top_k),
                        u(st.hidden),
                    ],
                ));
            }
            Op::TakeLastRows { x, out: o } => {
                let cols = g.buffer(*o).cols;
                let count = out * cols;
                ls.push(launch(
                    "take_last_rows",
                    grid1(count),
                    EW,
                    vec![ptr(*x), ptr(*o), u((n - out) * cols), u(count)],
                ));
            }
            Op::Sample { logits, out: o } => {
                ls.push(launch(
                    "sample",
                    (out as u32, 1, 1),
                    SAMPLE_THREADS,
                    vec![
                        ptr(*logits),
                        ptr(*o),
                        Arg::Ptr(b.params),
                        u(g.buffer(*logits).cols),
                    ],
                ));
            }
        }
    }
    Ok(ls)
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
pub fn check_limits(g: &Graph) -> Result<()> {
    for op in &g.ops {
        match op {
            Op::QkNormRope { heads, .. } | Op::Attention { heads, .. } => {
                if heads.dim > MAX_HEAD_DIM {
                    return Err(cuda_error(format!(
                        "head_dim {} is above the CUDA kernels' limit of {MAX_HEAD_DIM}",
                        heads.dim
                    )));
                }
                if heads.kv == 0 || heads.q % heads.kv != 0 {
                    return Err(cuda_error(format!(
                        "{} query heads do not share {} KV heads evenly",
                        heads.q, heads.kv
                    )));
                }
            }
            Op::MoeRoute { routing, .. }
                if routing.num_experts > MAX_EXPERTS || routing.top_k > MAX_TOP_K =>
            {
                return Err(cuda_error(format!(
                    "{} experts with top-{} routing is beyond the CUDA kernels' limits \
                     ({MAX_EXPERTS} experts, top-{MAX_TOP_K})",
                    routing.num_experts, routing.top_k
                )));
            }
            // Both routing kernels assume a pick always exists, and block routing a block of
            // at least one row.
            Op::MoeRoute { routing, .. }
                if routing.top_k > routing.num_experts
                    || routing.block.is_some_and(|b| b.size == 0) =>
            {
                return Err(cuda_error(format!("unsupported routing {routing:?}")));
            }
            Op::Sample { out, .. } if g.buffer(*out).cols != SAMPLE_WORDS => {
                return Err(cuda_error(format!(
                    "the samples buffer has {} words a row; the sample kernel writes \
                     {SAMPLE_WORDS}",
                    g.buffer(*out).cols
                )));
            }
            _ => {}
        }
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
}

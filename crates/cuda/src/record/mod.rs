//! The graph compiled for one pass shape: each op becomes one or more fully resolved kernel
//! launches (pointers, sizes, grids). The argument lists follow the kernels' signatures in
//! kernels/*.cu one for one. Per-step scalars (start position, block length, sampling) are not
//! here: kernels read them from the params buffer, so a recorded list stays valid for every pass
//! of the same shape.
//!
//! A pass holds the rows of one or more sequences, one after another. The ops that treat rows
//! alike (embedding, norms, matrices, experts, adds) run once over all of them: every weight is
//! read once for the whole batch, and each row is computed the same way whatever its neighbours
//! (a row's sums never mix with another's). The ops that depend on a row's sequence (rope
//! positions, the KV cache and its attention, the predicted rows, per-block routing, sampling)
//! run once per sequence, on pointers to its rows, with its own parameter words and its slot's
//! cache: the kernels are the ones a sequence alone runs, so its outputs are too.

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

/// One sequence's part of a pass: its rows, its parameter words and its KV-cache slot.
#[derive(Debug, Clone, Copy)]
pub struct SeqRows<'a> {
    /// Its tokens are the pass's rows `row0 .. row0 + rows`, its predicted rows the pass's
    /// predicted rows `out0 .. out0 + out` (the last `out` of its tokens).
    pub row0: usize,
    pub rows: usize,
    pub out0: usize,
    pub out: usize,
    /// Device address of its `P_WORDS` parameter words.
    pub params: u64,
    /// Per layer: its slot's K and V caches.
    pub kv: &'a [(u64, u64)],
}

/// What every op's recording reads: the pass's bindings, row counts and sequences.
pub struct Rec<'a> {
    pub b: &'a Bindings<'a>,
    /// Tokens and predicted rows of the pass (all sequences).
    pub n: usize,
    pub out: usize,
    pub seqs: &'a [SeqRows<'a>],
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

    /// The address of sequence `s`'s first row of buffer `id`: its first token row, or its
    /// first predicted row in a buffer of predicted rows (every element is 4 bytes).
    fn seq_ptr(&self, id: BufId, s: &SeqRows) -> Arg {
        let buf = self.b.graph.buffer(id);
        let first = match buf.rows {
            Rows::Tokens => s.row0,
            Rows::Out => s.out0,
        };
        Arg::Ptr(self.b.buffers[id.0] + (first * buf.cols * 4) as u64)
    }
}

fn u(v: usize) -> Arg {
    Arg::U32(v as u32)
}

/// Launches of one pass over the rows of `seqs`: each op handed to its family's module.
pub fn record(b: &Bindings, seqs: &[SeqRows]) -> Result<Vec<Launch>> {
    let n = seqs.iter().map(|s| s.rows).sum();
    let out = seqs.iter().map(|s| s.out).sum();
    let rec = Rec { b, n, out, seqs };
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
/// which a pass predicting nothing skips: a launch over zero rows is not a valid launch (per
/// sequence, the sequences predicting nothing are skipped the same way).
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
    use crate::weights::WeightFormat;
    use std::collections::{HashMap, HashSet};
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

    /// Kernels that run once per sequence of a pass, on its own rows, parameters and cache.
    const PER_SEQUENCE: [&str; 6] = [
        "qk_norm_rope",
        "kv_store",
        "attention",
        "take_last_rows",
        "moe_route_block",
        "sample",
    ];

    /// Records the pass of `seqs` ((rows, predicted rows, slot) each) over made-up addresses:
    /// distinct per buffer, per sequence's parameter words and per slot's caches.
    fn record_pass(g: &Graph, seqs: &[(usize, usize, usize)]) -> Vec<Launch> {
        record_pass_as(g, seqs, WeightFormat::Bf16)
    }

    /// `record_pass` with every matrix stored as `format`.
    fn record_pass_as(
        g: &Graph,
        seqs: &[(usize, usize, usize)],
        format: WeightFormat,
    ) -> Vec<Launch> {
        let weights = DeviceWeights::addresses_only(g, format);
        let buffers: Vec<u64> = (0..g.buffers.len())
            .map(|i| 0x1000_0000_0000 + ((i as u64) << 32))
            .collect();
        let kv: Vec<Vec<(u64, u64)>> = (0..3)
            .map(|slot| {
                (0..g.num_layers)
                    .map(|l| {
                        let k = 0x2000_0000_0000 + ((slot * 64 + l) as u64) * (2 << 32);
                        (k, k + (1 << 32))
                    })
                    .collect()
            })
            .collect();
        let b = Bindings {
            graph: g,
            weights: &weights,
            buffers: &buffers,
            inv_freq: &vec![0x3000_0000_0000; g.ops.len()],
            moe: MoeScratch {
                offsets: 1,
                active: 2,
                num_active: 3,
                pairs: 4,
                act: 5,
                ys: 6,
            },
        };
        let (mut row0, mut out0) = (0, 0);
        let mut rows = Vec::new();
        for (j, &(n, out, slot)) in seqs.iter().enumerate() {
            rows.push(SeqRows {
                row0,
                rows: n,
                out0,
                out,
                params: 0x4000_0000_0000 + (j * 64) as u64,
                kv: &kv[slot],
            });
            row0 += n;
            out0 += out;
        }
        record(&b, &rows).unwrap()
    }

    /// `alone`'s launch moved to where a sequence sits in a pass: its rows of every buffer
    /// `row0` (or `out0` predicted rows) further on, its parameter words the `j`-th.
    fn moved(g: &Graph, l: &Launch, j: usize, row0: usize, out0: usize) -> Launch {
        let mut l = l.clone();
        for a in &mut l.args {
            let Arg::Ptr(p) = a else { continue };
            if *p == 0x4000_0000_0000 {
                *p += (j * 64) as u64;
            } else if let Some(i) =
                (0..g.buffers.len()).find(|&i| *p == 0x1000_0000_0000 + ((i as u64) << 32))
            {
                let buf = g.buffer(BufId(i));
                let first = match buf.rows {
                    Rows::Tokens => row0,
                    Rows::Out => out0,
                };
                *p += (first * buf.cols * 4) as u64;
            }
        }
        l
    }

    fn by_op(ls: &[Launch], op: usize) -> Vec<Launch> {
        ls.iter().filter(|l| l.op == op).cloned().collect()
    }

    /// A batched pass runs each row-wise op once over every row, exactly as one sequence of
    /// the pass's size would, and each per-sequence op once per sequence, exactly as that
    /// sequence alone would run it, moved to its rows, its parameter words and its slot: the
    /// kernels, grids and sizes are a lone sequence's, so its results are too. LLaDA2.0's graph
    /// and LLaDA2.2's (per-block routing) both.
    #[test]
    fn a_batched_pass_runs_each_sequence_as_it_runs_alone() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let mut configs = vec![unmask_core::synthetic::shape_config("tiny").unwrap()];
        let c22 =
            unmask_core::config::Config::from_file(&fixtures.join("tiny-llada2.2/config.json"))
                .unwrap();
        assert!(c22.block_routing());
        configs.push(c22);
        for c in configs {
            let g = unmask_core::model::llada2::build(&c);
            // A window in slot 2, a prefill chunk predicting nothing in slot 0, a short tail
            // in slot 1.
            let seqs = [(32, 32, 2), (64, 0, 0), (7, 3, 1)];
            let batch = record_pass(&g, &seqs);
            let total = record_pass(&g, &[(103, 35, 0)]);
            let alone: Vec<Vec<Launch>> = seqs.iter().map(|&s| record_pass(&g, &[s])).collect();
            let mut per_seq_ops = 0;
            for op in 0..g.ops.len() {
                let got = by_op(&batch, op);
                let is_per_seq = by_op(&total, op)
                    .iter()
                    .any(|l| PER_SEQUENCE.contains(&l.kernel.as_str()));
                if !is_per_seq {
                    assert_eq!(got, by_op(&total, op), "op {op}: {:?}", g.ops[op]);
                    continue;
                }
                per_seq_ops += 1;
                let (mut row0, mut out0) = (0, 0);
                let mut want = Vec::new();
                for (j, &(n, out, _)) in seqs.iter().enumerate() {
                    for l in by_op(&alone[j], op) {
                        want.push(moved(&g, &l, j, row0, out0));
                    }
                    row0 += n;
                    out0 += out;
                }
                assert_eq!(got, want, "op {op}: {:?}", g.ops[op]);
            }
            // Rope, attention and routing per layer, and the tail's rows and sampling.
            assert!(per_seq_ops >= 2 * c.num_hidden_layers + 2, "{per_seq_ops}");
            let kernels: Vec<&str> = batch.iter().map(|l| l.kernel.as_str()).collect();
            assert_eq!(
                kernels.iter().filter(|k| **k == "sample").count(),
                2,
                "the sequence predicting nothing samples nothing"
            );
            assert_eq!(
                kernels.contains(&"moe_route_block"),
                c.block_routing(),
                "{kernels:?}"
            );
        }
    }

    /// Per entry point of NVRTC's PTX (the kernels after their macros): its parameters' PTX
    /// types (`.u64`, `.u32`, `.f32`, ...) and its launch bound (`.maxntid`), if any.
    fn ptx_entries(ptx: &str) -> HashMap<String, (Vec<String>, Option<u32>)> {
        let mut out = HashMap::new();
        for part in ptx.split(".entry ").skip(1) {
            let name = part.split('(').next().unwrap().trim().to_string();
            let (params, rest) = part.split_once(')').unwrap();
            let types = params
                .lines()
                .filter_map(|l| l.trim().strip_prefix(".param "))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect();
            let head = rest.split('{').next().unwrap();
            let bound = head
                .split(".maxntid")
                .nth(1)
                .map(|b| b.split(',').next().unwrap().trim().parse().unwrap());
            out.insert(name, (types, bound));
        }
        out
    }

    /// The PTX types an argument may be passed as.
    fn passes_as(a: &Arg, ty: &str) -> bool {
        match a {
            Arg::Ptr(_) | Arg::U64(_) => matches!(ty, ".u64" | ".b64" | ".s64"),
            Arg::U32(_) => matches!(ty, ".u32" | ".b32" | ".s32"),
            Arg::F32(_) => ty == ".f32",
        }
    }

    /// Every launch a pass records (every weight format; LLaDA2.0's graph in the tiny and mini
    /// shapes and LLaDA2.2's; alone, batched, and a 512-token prefill chunk) and the
    /// random-weight fillers' launches have grids within CUDA's limits, give the kernel as many
    /// arguments as it declares, each of its type (a pointer or u64 for a 64-bit parameter, u32
    /// for a 32-bit integer, f32 for a float), no more threads a block than its launch bound
    /// and no more dynamic shared memory than a block gets without opting in (48 KiB). The
    /// kernels have never run on a GPU here: a wrong argument list would read garbage there,
    /// not fail. NVRTC (no driver or GPU needed) gives the parameters as compiled;
    /// `UNMASK_REQUIRE_NVRTC=1` (CI) fails without it.
    #[test]
    fn every_launch_matches_its_kernels_parameters_and_launch_bound() {
        if !crate::compile::nvrtc_or_skip("cuda launches: parameter check") {
            return;
        }
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some("compute_80"),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(crate::kernels::program_source(), opts)
            .unwrap()
            .to_src();
        let entries = ptx_entries(&ptx);
        let names = crate::kernels::kernel_names();
        assert_eq!(entries.len(), names.len(), "{:?}", entries.keys());
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let configs = [
            unmask_core::synthetic::shape_config("tiny").unwrap(),
            unmask_core::config::Config::from_file(&fixtures.join("tiny-llada2.2/config.json"))
                .unwrap(),
            unmask_core::synthetic::shape_config("mini").unwrap(),
        ];
        let formats = [
            WeightFormat::F32,
            WeightFormat::Bf16,
            WeightFormat::F16,
            WeightFormat::Q8_0,
            WeightFormat::Q4,
        ];
        let mut checked = HashSet::new();
        let mut launches = Vec::new();
        for c in &configs {
            let g = unmask_core::model::llada2::build(c);
            for format in formats {
                for seqs in [
                    &[(32, 32, 0)][..],
                    &[(32, 32, 2), (64, 0, 0), (7, 3, 1)],
                    &[(512, 0, 0)],
                    &[(480, 32, 1)],
                ] {
                    launches.extend(
                        record_pass_as(&g, seqs, format)
                            .into_iter()
                            .map(|l| (format, l)),
                    );
                }
            }
        }
        // And the random weights' fillers (`bench` and the synthetic models load with them).
        for format in formats {
            let l = crate::weights::fill_launch(1 << 40, format, (96, 70), 7, 0.5, 0.02, true);
            launches.push((format, l));
        }
        for (format, l) in launches {
            let (types, bound) = &entries[&l.kernel];
            let what = format!("{} ({format:?}): {:?} for {types:?}", l.kernel, l.args);
            assert_eq!(l.args.len(), types.len(), "{what}");
            for (a, ty) in l.args.iter().zip(types) {
                assert!(passes_as(a, ty), "{what}");
            }
            // A zero extent is an invalid launch; y and z stop at 65535.
            let (x, y, z) = l.grid;
            assert!(
                (1..1 << 31).contains(&x) && (1..=65535).contains(&y) && (1..=65535).contains(&z),
                "{what}: grid {:?}",
                l.grid
            );
            let threads = l.block.0 * l.block.1 * l.block.2;
            assert!(
                threads <= bound.unwrap_or(1024),
                "{what}: {threads} threads"
            );
            assert!(l.shared_bytes <= 48 << 10, "{what}: {}", l.shared_bytes);
            checked.insert(l.kernel.clone());
        }
        let unchecked: Vec<&String> = names.iter().filter(|n| !checked.contains(*n)).collect();
        assert!(unchecked.is_empty(), "never recorded: {unchecked:?}");
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

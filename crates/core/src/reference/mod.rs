//! The reference backend: the graph interpreted op by op in plain f32 Rust (threads for the big
//! loops). It is the oracle every other backend is tested against; with `Kernels::Fast` its
//! matmuls run the SIMD kernels of `fast/` instead (the `cpu` backend, bit for bit the same).

pub mod fast;
mod matrix;
pub mod ops;
pub mod parallel;
#[cfg(not(target_arch = "wasm32"))]
mod pool;

pub use fast::Kernels;
pub use matrix::Matrix;

use crate::backend::{Backend, Capture, KernelTime, SlotStep, Step, StepOutput, StepStats};
use crate::decode::sampler;
use crate::error::{Error, Result};
use crate::graph::{BufId, Elem, Graph, Op, Rows, WeightId};
use crate::weights::WeightStore;
use std::ops::Range;

pub struct ReferenceBackend {
    graph: Graph,
    weights: Vec<Matrix>,
    /// The KV-cache slots (slot 0 is the one `step` uses).
    slots: Vec<KvSlot>,
    /// The concatenated window tokens and row counts of the step being run.
    tokens: Vec<u32>,
    rows: (usize, usize),
    /// Token ids must be below this (the graph's, computed once).
    token_rows: usize,
    f: Vec<Vec<f32>>,
    u: Vec<Vec<u32>>,
    inv_freq: Vec<Vec<f32>>,
    stats: StepStats,
    kernels: Kernels,
}

impl ReferenceBackend {
    /// The reference (plain loops) over the graph's weights from `store` (shapes were checked
    /// when the model was loaded).
    pub fn new(
        graph: Graph,
        store: &WeightStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        Self::with_kernels(graph, store, Kernels::Reference, progress)
    }

    /// The same interpreter with `kernels` (`Kernels::Fast`: the `cpu` backend).
    pub fn with_kernels(
        graph: Graph,
        store: &WeightStore,
        kernels: Kernels,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let total = graph.weights.len();
        let mut weights = Vec::with_capacity(total);
        for (i, w) in graph.weights.iter().enumerate() {
            let t = store.get(&w.name)?;
            if t.shape != w.shape {
                return Err(Error::Weights(format!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    w.name, t.shape, w.shape
                )));
            }
            weights.push(Matrix::from_tensor(t));
            progress(i + 1, total);
        }
        let inv_freq = graph
            .ops
            .iter()
            .map(|op| match op {
                Op::QkNormRope { rot_dim, theta, .. } => ops::rope_inv_freq(*rot_dim, *theta),
                _ => Vec::new(),
            })
            .collect();
        let nb = graph.buffers.len();
        Ok(ReferenceBackend {
            slots: vec![KvSlot::new(graph.num_layers)],
            weights,
            tokens: Vec::new(),
            rows: (0, 0),
            token_rows: graph.token_rows(),
            f: vec![Vec::new(); nb],
            u: vec![Vec::new(); nb],
            inv_freq,
            stats: StepStats::default(),
            kernels,
            graph,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The same backend with `slots` KV caches (at least 1), for batches of that many
    /// sequences. A slot's cache takes memory only for the positions it holds.
    pub fn with_slots(mut self, slots: usize) -> Self {
        let layers = self.graph.num_layers;
        self.slots.resize_with(slots.max(1), || KvSlot::new(layers));
        self
    }

    fn vector(&self, w: WeightId) -> Vec<f32> {
        self.weights[w.0].to_vec()
    }
}

impl Backend for ReferenceBackend {
    fn name(&self) -> String {
        match self.kernels {
            Kernels::Reference => format!("cpu (reference, {} threads)", parallel::threads()),
            Kernels::Fast => format!(
                "cpu ({}, {} threads)",
                fast::matmul::isa(),
                parallel::threads()
            ),
            Kernels::Int8 => format!(
                "cpu ({}, int8 dots for q8_0/q4, {} threads)",
                fast::matmul::isa(),
                parallel::threads()
            ),
        }
    }

    fn cached(&self) -> usize {
        self.slots[0].cached
    }

    fn reset(&mut self) {
        self.slots[0].cached = 0;
    }

    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn cached_in(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |s| s.cached)
    }

    fn reset_slot(&mut self, slot: usize) {
        if slot < self.slots.len() {
            // A new slot: the memory it held is freed.
            self.slots[slot] = KvSlot::new(self.graph.num_layers);
        }
    }

    fn step_batch(&mut self, steps: &[SlotStep]) -> Result<Vec<StepOutput>> {
        self.run(steps, None)
    }

    fn last_stats(&self) -> StepStats {
        self.stats.clone()
    }

    fn last_routing(&self) -> Option<Vec<Vec<u32>>> {
        // The routing buffers are host memory here: reading them is free.
        let lists = self
            .graph
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::MoeRoute { ids, .. } => Some(self.u[ids.0].clone()),
                _ => None,
            })
            .collect();
        Some(lists)
    }

    fn step(&mut self, s: &Step) -> Result<StepOutput> {
        Ok(self.run(&[slot0(s)], None)?.remove(0))
    }

    fn profile_step(&mut self, s: &Step) -> Option<Result<(StepOutput, Vec<KernelTime>)>> {
        // wasm32-unknown-unknown has no clock in std (`Instant::now` panics there).
        if cfg!(target_arch = "wasm32") {
            return None;
        }
        let mut times = Vec::new();
        Some(
            self.run(&[slot0(s)], Some(&mut times))
                .map(|mut out| (out.remove(0), times)),
        )
    }
}

/// One sequence's KV cache: per layer K and V as `[capacity, kv_heads * head_dim]` (grown on
/// demand), and the positions it holds.
struct KvSlot {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    cached: usize,
}

impl KvSlot {
    fn new(layers: usize) -> Self {
        KvSlot {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            cached: 0,
        }
    }
}

/// `s` as the one step of a batch, in slot 0.
fn slot0<'a>(s: &Step<'a>) -> SlotStep<'a> {
    SlotStep {
        slot: 0,
        step: s.clone(),
    }
}

/// One sequence of a batched forward: its rows of the concatenated window (`rows`) and of the
/// output rows (`outs`).
struct Segment<'s> {
    slot: usize,
    step: &'s Step<'s>,
    rows: Range<usize>,
    outs: Range<usize>,
}

fn segments<'s>(steps: &'s [SlotStep<'s>]) -> Vec<Segment<'s>> {
    let (mut row, mut out) = (0, 0);
    steps
        .iter()
        .map(|s| {
            let (n, o) = (s.step.tokens.len(), s.step.out_rows);
            let seg = Segment {
                slot: s.slot,
                step: &s.step,
                rows: row..row + n,
                outs: out..out + o,
            };
            (row, out) = (row + n, out + o);
            seg
        })
        .collect()
}

impl ReferenceBackend {
    /// One forward over the windows of `steps` (one sequence each), each op timed on the host
    /// clock into `times` when given. Ops over rows run on all rows together; the ones that
    /// depend on a sequence (positions, attention, block routing, the tail rows, sampling)
    /// run per segment.
    fn run(
        &mut self,
        steps: &[SlotStep],
        mut times: Option<&mut Vec<KernelTime>>,
    ) -> Result<Vec<StepOutput>> {
        let slots = &self.slots;
        crate::backend::check_batch(steps, slots.len(), |s| slots[s].cached, self.token_rows)?;
        let segs = segments(steps);
        self.tokens.clear();
        for s in steps {
            self.tokens.extend_from_slice(s.step.tokens);
        }
        self.rows = (self.tokens.len(), segs.last().map_or(0, |s| s.outs.end));
        let mut dispatches = 0;
        let ops = std::mem::take(&mut self.graph.ops);
        let result = (|| {
            for (oi, op) in ops.iter().enumerate() {
                // The clock is read only when profiling: it does not exist on wasm32.
                let t = times.is_some().then(std::time::Instant::now);
                self.run_op(oi, op, &segs)?;
                if let (Some(times), Some(t)) = (times.as_deref_mut(), t) {
                    times.push(KernelTime {
                        op: oi,
                        fused: Vec::new(),
                        kernel: op.name().to_string(),
                        seconds: t.elapsed().as_secs_f64(),
                    });
                }
                dispatches += 1;
            }
            Ok::<_, Error>(())
        })();
        self.graph.ops = ops;
        if let Err(e) = result {
            // A half-run forward may have written part of a window's K/V: nothing past the
            // step's start is trusted.
            for s in steps {
                let c = &mut self.slots[s.slot].cached;
                *c = (*c).min(s.step.start);
            }
            return Err(e);
        }
        for s in steps {
            self.slots[s.slot].cached = s.step.start + s.step.keep;
        }
        self.stats = StepStats {
            dispatches,
            ..Default::default()
        };
        Ok(segs.iter().map(|seg| self.output(seg)).collect())
    }

    /// A segment's samples, and its logits and hidden states when its step captures them.
    fn output(&self, seg: &Segment) -> StepOutput {
        let w = crate::backend::SAMPLE_WORDS;
        // A graph for tests may have no sampler (or no logits): its buffer then stays empty.
        let words = self.u[self.graph.samples.0]
            .get(seg.outs.start * w..seg.outs.end * w)
            .unwrap_or(&[]);
        let mut out = StepOutput {
            samples: crate::backend::Sampled::from_words(words),
            ..Default::default()
        };
        let rows_of = |b: BufId| {
            let d = self.graph.buffer(b);
            let r = match d.rows {
                Rows::Tokens => &seg.rows,
                Rows::Out => &seg.outs,
            };
            r.start * d.cols..r.end * d.cols
        };
        if seg.step.capture != Capture::Samples {
            let logits = &self.f[self.graph.logits.0];
            out.logits = Some(
                logits
                    .get(rows_of(self.graph.logits))
                    .unwrap_or(&[])
                    .to_vec(),
            );
        }
        if seg.step.capture == Capture::Hidden {
            out.hidden = self
                .graph
                .hidden
                .iter()
                // u32 buffers (routed expert ids) as their bits, as the device backends do.
                .map(|&b| match self.graph.buffer(b).elem {
                    Elem::U32 => self.u[b.0]
                        .get(rows_of(b))
                        .unwrap_or(&[])
                        .iter()
                        .map(|&x| f32::from_bits(x))
                        .collect(),
                    Elem::F32 => self.f[b.0].get(rows_of(b)).unwrap_or(&[]).to_vec(),
                })
                .collect();
        }
        out
    }

    fn rows_of(&self, b: BufId) -> usize {
        match self.graph.buffer(b).rows {
            Rows::Tokens => self.rows.0,
            Rows::Out => self.rows.1,
        }
    }

    /// Sizes (without reallocating when capacity suffices) and returns the output buffer.
    fn out_f(&mut self, b: BufId) -> Vec<f32> {
        let len = self.rows_of(b) * self.graph.buffer(b).cols;
        let mut v = std::mem::take(&mut self.f[b.0]);
        v.clear();
        v.resize(len, 0.0);
        v
    }

    fn out_u(&mut self, b: BufId) -> Vec<u32> {
        debug_assert_eq!(self.graph.buffer(b).elem, Elem::U32);
        let len = self.rows_of(b) * self.graph.buffer(b).cols;
        let mut v = std::mem::take(&mut self.u[b.0]);
        v.clear();
        v.resize(len, 0);
        v
    }

    fn run_op(&mut self, index: usize, op: &Op, segs: &[Segment]) -> Result<()> {
        match op {
            Op::Embed { ids: _, table, out } => {
                let mut o = self.out_f(*out);
                let t = &self.weights[table.0];
                for (i, &id) in self.tokens.iter().enumerate() {
                    t.row_into(id as usize, &mut o[i * t.cols..(i + 1) * t.cols]);
                }
                self.f[out.0] = o;
            }
            Op::RmsNorm {
                x,
                weight,
                out,
                eps,
            } => {
                let mut o = self.out_f(*out);
                let w = self.vector(*weight);
                ops::rms_norm(&self.f[x.0], &w, *eps, &mut o);
                self.f[out.0] = o;
            }
            Op::AddRmsNorm {
                a,
                b,
                weight,
                sum,
                out,
                eps,
            } => {
                let mut total = self.out_f(*sum);
                ops::add(&self.f[a.0], &self.f[b.0], &mut total);
                let mut o = self.out_f(*out);
                ops::rms_norm(&total, &self.vector(*weight), *eps, &mut o);
                self.f[sum.0] = total;
                self.f[out.0] = o;
            }
            Op::MatMul { x, weight, out } => {
                let mut o = self.out_f(*out);
                self.kernels
                    .matmul(&self.f[x.0], &self.weights[weight.0], &mut o);
                self.f[out.0] = o;
            }
            Op::QkNormRope {
                qkv,
                q_norm,
                k_norm,
                heads,
                eps,
                ..
            } => {
                let qn = q_norm.map(|w| self.vector(w));
                let kn = k_norm.map(|w| self.vector(w));
                let mut buf = std::mem::take(&mut self.f[qkv.0]);
                let width = (heads.q + 2 * heads.kv) * heads.dim;
                for seg in segs {
                    ops::qk_norm_rope(
                        &mut buf[seg.rows.start * width..seg.rows.end * width],
                        *heads,
                        qn.as_deref(),
                        kn.as_deref(),
                        *eps,
                        &self.inv_freq[index],
                        seg.step.start,
                    );
                }
                self.f[qkv.0] = buf;
            }
            Op::Attention {
                qkv,
                layer,
                heads,
                out,
            } => {
                let d = heads.dim;
                let width = (heads.q + 2 * heads.kv) * d;
                let (kvw, ow) = (heads.kv * d, heads.q * d);
                let mut o = self.out_f(*out);
                let src = &self.f[qkv.0];
                // Each sequence attends to its own slot's cache only.
                for seg in segs {
                    let (n, start) = (seg.rows.len(), seg.step.start);
                    let end = start + n;
                    let kv = &mut self.slots[seg.slot];
                    let (kc, vc) = (&mut kv.k[*layer], &mut kv.v[*layer]);
                    if kc.len() < end * kvw {
                        kc.resize(end * kvw, 0.0);
                        vc.resize(end * kvw, 0.0);
                    }
                    let rows = &src[seg.rows.start * width..seg.rows.end * width];
                    for (i, row) in rows.chunks_exact(width).enumerate() {
                        let p = (start + i) * kvw;
                        kc[p..p + kvw].copy_from_slice(&row[heads.q * d..heads.q * d + kvw]);
                        vc[p..p + kvw].copy_from_slice(&row[heads.q * d + kvw..]);
                    }
                    self.kernels.attention(
                        rows,
                        *heads,
                        kc,
                        vc,
                        start,
                        seg.step.block_length,
                        &mut o[seg.rows.start * ow..seg.rows.end * ow],
                    );
                }
                self.f[out.0] = o;
            }
            Op::Add { a, b, out } => {
                let mut o = self.out_f(*out);
                ops::add(&self.f[a.0], &self.f[b.0], &mut o);
                self.f[out.0] = o;
            }
            Op::SwiGlu { gate, up, out } => {
                let mut o = self.out_f(*out);
                ops::swiglu(&self.f[gate.0], &self.f[up.0], &mut o);
                self.f[out.0] = o;
            }
            Op::MoeRoute {
                logits,
                bias,
                routing,
                ids,
                weights,
            } => {
                let bias = bias.map(|b| self.vector(b));
                let mut oi = self.out_u(*ids);
                let mut ow = self.out_f(*weights);
                let e = routing.num_experts;
                let rows = &self.f[logits.0];
                let routed: Vec<(Vec<u32>, Vec<f32>)> = match routing.block {
                    None => rows
                        .chunks_exact(e)
                        .map(|row| ops::route(row, bias.as_deref(), routing))
                        .collect(),
                    // Routing blocks are a sequence's own positions.
                    Some(b) => {
                        let mut all = Vec::with_capacity(rows.len() / e.max(1));
                        for seg in segs {
                            let part = &rows[seg.rows.start * e..seg.rows.end * e];
                            all.extend(ops::route_blocks(
                                part,
                                bias.as_deref(),
                                routing,
                                b,
                                seg.step.start,
                            )?);
                        }
                        all
                    }
                };
                let k = routing.top_k;
                for (t, (i, w)) in routed.into_iter().enumerate() {
                    oi[t * k..(t + 1) * k].copy_from_slice(&i);
                    ow[t * k..(t + 1) * k].copy_from_slice(&w);
                }
                self.u[ids.0] = oi;
                self.f[weights.0] = ow;
            }
            Op::MoeExperts {
                x,
                ids,
                weights,
                experts,
                out,
            } => {
                let mut o = self.out_f(*out);
                let ex = ops::Experts {
                    gate: experts.gate.iter().map(|w| &self.weights[w.0]).collect(),
                    up: experts.up.iter().map(|w| &self.weights[w.0]).collect(),
                    down: experts.down.iter().map(|w| &self.weights[w.0]).collect(),
                };
                let top_k = self.graph.buffer(*ids).cols;
                ops::moe_experts(
                    self.kernels,
                    &self.f[x.0],
                    &self.u[ids.0],
                    &self.f[weights.0],
                    top_k,
                    &ex,
                    &mut o,
                );
                self.f[out.0] = o;
            }
            Op::TakeLastRows { x, out } => {
                let mut o = self.out_f(*out);
                let (src, c) = (&self.f[x.0], self.graph.buffer(*out).cols);
                for seg in segs {
                    let from = seg.rows.end - seg.outs.len();
                    o[seg.outs.start * c..seg.outs.end * c]
                        .copy_from_slice(&src[from * c..seg.rows.end * c]);
                }
                self.f[out.0] = o;
            }
            Op::Sample { logits, out } => {
                let mut o = self.out_u(*out);
                let vocab = self.graph.buffer(*logits).cols;
                let logits = &self.f[logits.0];
                let w = crate::backend::SAMPLE_WORDS;
                for seg in segs {
                    let s = seg.step;
                    // Each sequence's own parameters, seed and positions.
                    let first = (s.start + s.tokens.len() - s.out_rows) as u32;
                    let rows = seg.outs.len();
                    let base = seg.outs.start;
                    // Rows are independent: shared out over the pool (a row's softmax over the
                    // whole vocabulary, in f64, is most of the sampler's time).
                    let parts = parallel::map_chunks(rows, rows * vocab * 16, |range| {
                        range
                            .flat_map(|r| {
                                let at = (base + r) * vocab;
                                let row = &logits[at..at + vocab];
                                sampler::sample_row(row, &s.sampling, first + r as u32).to_words()
                            })
                            .collect::<Vec<u32>>()
                    });
                    let mut at = base * w;
                    for part in parts {
                        o[at..at + part.len()].copy_from_slice(&part);
                        at += part.len();
                    }
                    debug_assert_eq!(at, seg.outs.end * w);
                }
                self.u[out.0] = o;
            }
        }
        Ok(())
    }
}

//! The reference backend: the graph interpreted op by op in plain f32 Rust (threads for the big
//! loops). It is the oracle every other backend is tested against; with `Kernels::Fast` its
//! matmuls run the SIMD kernels of `fast/` instead (the `cpu` backend, bit for bit the same).

pub mod fast;
mod matrix;
pub mod ops;
pub mod parallel;

pub use fast::Kernels;
pub use matrix::Matrix;

use crate::backend::{Backend, Capture, KernelTime, Step, StepOutput, StepStats};
use crate::decode::sampler;
use crate::error::{Error, Result};
use crate::graph::{BufId, Elem, Graph, Op, Rows, WeightId};
use crate::weights::WeightStore;

pub struct ReferenceBackend {
    graph: Graph,
    weights: Vec<Matrix>,
    /// Per layer: K and V as `[capacity, kv_heads * head_dim]`.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    cached: usize,
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
            k_cache: vec![Vec::new(); graph.num_layers],
            v_cache: vec![Vec::new(); graph.num_layers],
            weights,
            cached: 0,
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
        }
    }

    fn cached(&self) -> usize {
        self.cached
    }

    fn reset(&mut self) {
        self.cached = 0;
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
        self.run(s, None)
    }

    fn profile_step(&mut self, s: &Step) -> Option<Result<(StepOutput, Vec<KernelTime>)>> {
        // wasm32-unknown-unknown has no clock in std (`Instant::now` panics there).
        if cfg!(target_arch = "wasm32") {
            return None;
        }
        let mut times = Vec::new();
        Some(self.run(s, Some(&mut times)).map(|out| (out, times)))
    }
}

impl ReferenceBackend {
    /// One step, each op timed on the host clock into `times` when given.
    fn run(&mut self, s: &Step, mut times: Option<&mut Vec<KernelTime>>) -> Result<StepOutput> {
        s.check(self.cached, self.token_rows)?;
        let mut dispatches = 0;
        let ops = std::mem::take(&mut self.graph.ops);
        let result = (|| {
            for (oi, op) in ops.iter().enumerate() {
                // The clock is read only when profiling: it does not exist on wasm32.
                let t = times.is_some().then(std::time::Instant::now);
                self.run_op(oi, op, s)?;
                if let (Some(times), Some(t)) = (times.as_deref_mut(), t) {
                    times.push(KernelTime {
                        op: oi,
                        kernel: op.name().to_string(),
                        seconds: t.elapsed().as_secs_f64(),
                    });
                }
                dispatches += 1;
            }
            Ok::<_, Error>(())
        })();
        self.graph.ops = ops;
        result?;
        self.cached = s.start + s.keep;

        let samples = crate::backend::Sampled::from_words(&self.u[self.graph.samples.0]);
        let mut out = StepOutput {
            samples,
            ..Default::default()
        };
        if s.capture != Capture::Samples {
            out.logits = Some(self.f[self.graph.logits.0].clone());
        }
        if s.capture == Capture::Hidden {
            out.hidden = self
                .graph
                .hidden
                .iter()
                // u32 buffers (routed expert ids) as their bits, as the device backends do.
                .map(|b| match self.graph.buffer(*b).elem {
                    Elem::U32 => self.u[b.0].iter().map(|&x| f32::from_bits(x)).collect(),
                    Elem::F32 => self.f[b.0].clone(),
                })
                .collect();
        }
        self.stats = StepStats {
            dispatches,
            submissions: 0,
            bytes_uploaded: 0,
            bytes_read_back: 0,
            allocations: 0,
        };
        Ok(out)
    }

    /// Sizes (without reallocating when capacity suffices) and returns the output buffer.
    fn out_f(&mut self, b: BufId, s: &Step) -> Vec<f32> {
        let d = self.graph.buffer(b);
        let rows = match d.rows {
            Rows::Tokens => s.tokens.len(),
            Rows::Out => s.out_rows,
        };
        let mut v = std::mem::take(&mut self.f[b.0]);
        v.clear();
        v.resize(rows * d.cols, 0.0);
        v
    }

    fn out_u(&mut self, b: BufId, s: &Step) -> Vec<u32> {
        let d = self.graph.buffer(b);
        debug_assert_eq!(d.elem, Elem::U32);
        let rows = match d.rows {
            Rows::Tokens => s.tokens.len(),
            Rows::Out => s.out_rows,
        };
        let mut v = std::mem::take(&mut self.u[b.0]);
        v.clear();
        v.resize(rows * d.cols, 0);
        v
    }

    fn run_op(&mut self, index: usize, op: &Op, s: &Step) -> Result<()> {
        match op {
            Op::Embed { ids: _, table, out } => {
                let mut o = self.out_f(*out, s);
                let t = &self.weights[table.0];
                for (i, &id) in s.tokens.iter().enumerate() {
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
                let mut o = self.out_f(*out, s);
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
                let mut total = self.out_f(*sum, s);
                ops::add(&self.f[a.0], &self.f[b.0], &mut total);
                let mut o = self.out_f(*out, s);
                ops::rms_norm(&total, &self.vector(*weight), *eps, &mut o);
                self.f[sum.0] = total;
                self.f[out.0] = o;
            }
            Op::MatMul { x, weight, out } => {
                let mut o = self.out_f(*out, s);
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
                ops::qk_norm_rope(
                    &mut buf,
                    *heads,
                    qn.as_deref(),
                    kn.as_deref(),
                    *eps,
                    &self.inv_freq[index],
                    s.start,
                );
                self.f[qkv.0] = buf;
            }
            Op::Attention {
                qkv,
                layer,
                heads,
                out,
            } => {
                let n = s.tokens.len();
                let d = heads.dim;
                let width = (heads.q + 2 * heads.kv) * d;
                let kvw = heads.kv * d;
                let end = s.start + n;
                let mut o = self.out_f(*out, s);
                let (kc, vc) = (&mut self.k_cache[*layer], &mut self.v_cache[*layer]);
                if kc.len() < end * kvw {
                    kc.resize(end * kvw, 0.0);
                    vc.resize(end * kvw, 0.0);
                }
                let src = &self.f[qkv.0];
                for i in 0..n {
                    let row = &src[i * width..(i + 1) * width];
                    let p = (s.start + i) * kvw;
                    kc[p..p + kvw].copy_from_slice(&row[heads.q * d..heads.q * d + kvw]);
                    vc[p..p + kvw].copy_from_slice(&row[heads.q * d + kvw..]);
                }
                ops::attention(src, *heads, kc, vc, s.start, s.block_length, &mut o);
                self.f[out.0] = o;
            }
            Op::Add { a, b, out } => {
                let mut o = self.out_f(*out, s);
                ops::add(&self.f[a.0], &self.f[b.0], &mut o);
                self.f[out.0] = o;
            }
            Op::SwiGlu { gate, up, out } => {
                let mut o = self.out_f(*out, s);
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
                let mut oi = self.out_u(*ids, s);
                let mut ow = self.out_f(*weights, s);
                let e = routing.num_experts;
                let rows = &self.f[logits.0];
                let routed: Vec<(Vec<u32>, Vec<f32>)> = match routing.block {
                    None => rows
                        .chunks_exact(e)
                        .map(|row| ops::route(row, bias.as_deref(), routing))
                        .collect(),
                    Some(b) => ops::route_blocks(rows, bias.as_deref(), routing, b, s.start)?,
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
                let mut o = self.out_f(*out, s);
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
                let mut o = self.out_f(*out, s);
                let src = &self.f[x.0];
                let skip = src.len() - o.len();
                o.copy_from_slice(&src[skip..]);
                self.f[out.0] = o;
            }
            Op::Sample { logits, out } => {
                let mut o = self.out_u(*out, s);
                let vocab = self.graph.buffer(*logits).cols;
                let first = (s.start + s.tokens.len() - s.out_rows) as u32;
                let rows = self.f[logits.0].len() / vocab.max(1);
                let logits = &self.f[logits.0];
                // Rows are independent: shared out over the pool (a row's softmax over the
                // whole vocabulary, in f64, is most of the sampler's time).
                let parts = parallel::map_chunks(rows, rows * vocab * 16, |range| {
                    range
                        .flat_map(|r| {
                            let row = &logits[r * vocab..(r + 1) * vocab];
                            sampler::sample_row(row, &s.sampling, first + r as u32).to_words()
                        })
                        .collect::<Vec<u32>>()
                });
                let w = crate::backend::SAMPLE_WORDS;
                let mut at = 0;
                for part in parts {
                    o[at..at + part.len()].copy_from_slice(&part);
                    at += part.len();
                }
                debug_assert_eq!(at, rows * w);
                self.u[out.0] = o;
            }
        }
        Ok(())
    }
}

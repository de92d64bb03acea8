//! What each op reads, writes, costs and is: the one table the backends' buffer planners and
//! the bench's traffic model use, so a new op is described here once.

use super::{BufId, Graph, Op, WeightId};
use serde::Serialize;

/// Kinds of op, one per kernel family: the lowering modules and the shader and kernel files of
/// both GPU backends (`crates/wgpu/shaders/`, `crates/cuda/kernels/`) are split the same way.
/// (The expert matrices, `moe_gate_up` and `moe_down`, sit with the matrix kernels.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpFamily {
    Embed,
    Norm,
    MatMul,
    Rope,
    Attention,
    Elementwise,
    Moe,
    Sample,
}

impl OpFamily {
    pub const ALL: [OpFamily; 8] = [
        OpFamily::Embed,
        OpFamily::Norm,
        OpFamily::MatMul,
        OpFamily::Rope,
        OpFamily::Attention,
        OpFamily::Elementwise,
        OpFamily::Moe,
        OpFamily::Sample,
    ];

    /// The family's file name (`matmul.wgsl`, `matmul.cu`, ...) without its extension.
    pub fn file_stem(self) -> &'static str {
        match self {
            OpFamily::Embed => "embed",
            OpFamily::Norm => "rms_norm",
            OpFamily::MatMul => "matmul",
            OpFamily::Rope => "rope",
            OpFamily::Attention => "attention",
            OpFamily::Elementwise => "elementwise",
            OpFamily::Moe => "moe",
            OpFamily::Sample => "sample",
        }
    }
}

impl Op {
    /// The buffers the op reads (an in-place op reads and writes the same buffer).
    pub fn reads(&self) -> Vec<BufId> {
        match self {
            Op::Embed { ids, .. } => vec![*ids],
            Op::RmsNorm { x, .. } | Op::MatMul { x, .. } | Op::TakeLastRows { x, .. } => vec![*x],
            Op::QkNormRope { qkv, .. } | Op::Attention { qkv, .. } => vec![*qkv],
            Op::Add { a, b, .. } | Op::AddRmsNorm { a, b, .. } => vec![*a, *b],
            Op::SwiGlu { gate, up, .. } => vec![*gate, *up],
            Op::MoeRoute { logits, .. } | Op::Sample { logits, .. } => vec![*logits],
            Op::MoeExperts {
                x, ids, weights, ..
            } => vec![*x, *ids, *weights],
        }
    }

    /// The buffers the op writes.
    pub fn writes(&self) -> Vec<BufId> {
        match self {
            Op::QkNormRope { qkv, .. } => vec![*qkv],
            Op::MoeRoute { ids, weights, .. } => vec![*ids, *weights],
            Op::AddRmsNorm { sum, out, .. } => vec![*sum, *out],
            Op::Embed { out, .. }
            | Op::RmsNorm { out, .. }
            | Op::MatMul { out, .. }
            | Op::Attention { out, .. }
            | Op::Add { out, .. }
            | Op::SwiGlu { out, .. }
            | Op::MoeExperts { out, .. }
            | Op::TakeLastRows { out, .. }
            | Op::Sample { out, .. } => vec![*out],
        }
    }

    /// Every buffer the op touches, each once (reads first).
    pub fn buffers(&self) -> Vec<BufId> {
        let mut all = self.reads();
        for b in self.writes() {
            if !all.contains(&b) {
                all.push(b);
            }
        }
        all
    }

    /// The weights the op reads (for the experts: every expert's, routed or not).
    pub fn weights(&self) -> Vec<WeightId> {
        match self {
            Op::Embed { table, .. } => vec![*table],
            Op::RmsNorm { weight, .. }
            | Op::AddRmsNorm { weight, .. }
            | Op::MatMul { weight, .. } => vec![*weight],
            Op::QkNormRope { q_norm, k_norm, .. } => q_norm.iter().chain(k_norm).copied().collect(),
            Op::MoeRoute { bias, .. } => bias.iter().copied().collect(),
            Op::MoeExperts { experts, .. } => experts
                .gate
                .iter()
                .chain(&experts.up)
                .chain(&experts.down)
                .copied()
                .collect(),
            Op::Attention { .. }
            | Op::Add { .. }
            | Op::SwiGlu { .. }
            | Op::TakeLastRows { .. }
            | Op::Sample { .. } => Vec::new(),
        }
    }

    /// The op's name in snake case (what the cpu backend's profile calls its "kernel").
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embed { .. } => "embed",
            Op::RmsNorm { .. } => "rms_norm",
            Op::AddRmsNorm { .. } => "add_rms_norm",
            Op::MatMul { .. } => "matmul",
            Op::QkNormRope { .. } => "qk_norm_rope",
            Op::Attention { .. } => "attention",
            Op::Add { .. } => "add",
            Op::SwiGlu { .. } => "swiglu",
            Op::TakeLastRows { .. } => "take_last_rows",
            Op::MoeRoute { .. } => "moe_route",
            Op::MoeExperts { .. } => "moe_experts",
            Op::Sample { .. } => "sample",
        }
    }

    pub fn family(&self) -> OpFamily {
        match self {
            Op::Embed { .. } => OpFamily::Embed,
            Op::RmsNorm { .. } | Op::AddRmsNorm { .. } => OpFamily::Norm,
            Op::MatMul { .. } => OpFamily::MatMul,
            Op::QkNormRope { .. } => OpFamily::Rope,
            Op::Attention { .. } => OpFamily::Attention,
            Op::Add { .. } | Op::SwiGlu { .. } | Op::TakeLastRows { .. } => OpFamily::Elementwise,
            Op::MoeRoute { .. } | Op::MoeExperts { .. } => OpFamily::Moe,
            Op::Sample { .. } => OpFamily::Sample,
        }
    }
}

/// What one op moves and computes in one step: the inputs of a roofline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OpCost {
    /// Stored bytes of the weights it must read (quantized ones at their packed size): for the
    /// experts only the routed ones, for an embedding table only its tokens' rows.
    pub weight_bytes: u64,
    /// Bytes of the KV cache read (every cached and window position) and written (the window).
    /// K/V count as f32, as the backends store them.
    pub kv_read: u64,
    pub kv_written: u64,
    /// Bytes of the graph buffers it reads and writes (4-byte elements).
    pub activation_bytes: u64,
    /// Floating-point operations (a multiply-add is two), by the counts documented on
    /// [`Op::cost`].
    pub flops: u64,
    /// For `MoeExperts`: distinct experts read (fractional when the routing is not known).
    pub experts_touched: Option<f64>,
}

/// The step an op's cost is asked for.
pub struct CostOf<'a> {
    /// Window tokens, predicted rows and cached positions before the window.
    pub tokens: usize,
    pub out: usize,
    pub start: usize,
    /// Stored bytes of a weight.
    pub stored: &'a dyn Fn(WeightId) -> u64,
    /// For `MoeExperts`: the experts its rows picked (`[rows * top_k]`), when known. Unknown,
    /// each row picks `top_k` of the experts uniformly at random, independently: exact for one
    /// token, an upper estimate for a window of a trained model, whose tokens agree on experts
    /// more often than chance.
    pub routed: Option<&'a [u32]>,
}

impl Op {
    /// Bytes and flops of the op in the step `at`. Flops count: 2 per multiply-add of a matrix
    /// product and of attention (QK^T and PV over every key a row may see: the cache and the
    /// window), 4 per element for a norm (5 with its add), 5 per element for SwiGLU, 1 for an
    /// add, 8 per rotated or normed head element for rope, 4 per router score, 2 per logit for
    /// sampling. Every weight is read whole but the embedding table and the experts.
    pub fn cost(&self, g: &Graph, at: &CostOf) -> OpCost {
        let rows = |b: BufId| g.buffer_rows(b, at.tokens, at.out) as u64;
        let elems = |b: BufId| rows(b) * g.buffer(b).cols as u64;
        let stored = |ws: &[WeightId]| ws.iter().map(|&w| (at.stored)(w)).sum::<u64>();
        let mut c = OpCost {
            weight_bytes: stored(&self.weights()),
            activation_bytes: self
                .reads()
                .iter()
                .chain(&self.writes())
                .map(|&b| g.buffer_bytes(b, at.tokens, at.out) as u64)
                .sum(),
            ..OpCost::default()
        };
        match self {
            Op::Embed { table, out, .. } => {
                let table_rows = g.weight(*table).shape[0].max(1) as u64;
                c.weight_bytes = (at.stored)(*table) / table_rows * rows(*out);
            }
            Op::RmsNorm { out, .. } => c.flops = 4 * elems(*out),
            Op::AddRmsNorm { out, .. } => c.flops = 5 * elems(*out),
            Op::MatMul { weight, out, .. } => {
                let inner = g.weight(*weight).shape.get(1).copied().unwrap_or(0) as u64;
                c.flops = 2 * elems(*out) * inner;
            }
            Op::QkNormRope { qkv, heads, .. } => {
                c.flops = 8 * rows(*qkv) * ((heads.q + heads.kv) * heads.dim) as u64;
            }
            Op::Attention { qkv, heads, .. } => {
                let per_position = (2 * heads.kv * heads.dim * 4) as u64;
                let keys = (at.start + at.tokens) as u64;
                c.kv_read = per_position * keys;
                c.kv_written = per_position * at.tokens as u64;
                c.flops = 4 * rows(*qkv) * (heads.q * heads.dim) as u64 * keys;
            }
            Op::Add { out, .. } => c.flops = elems(*out),
            Op::SwiGlu { out, .. } => c.flops = 5 * elems(*out),
            Op::TakeLastRows { .. } => {}
            Op::MoeRoute { logits, .. } => c.flops = 4 * elems(*logits),
            Op::MoeExperts {
                experts, ids, x, ..
            } => {
                let count = experts.gate.len();
                let top_k = g.buffer(*ids).cols;
                let expert_bytes =
                    |e: usize| stored(&[experts.gate[e], experts.up[e], experts.down[e]]);
                let (touched, bytes) = match at.routed {
                    Some(picked) => {
                        let set: std::collections::BTreeSet<usize> = picked
                            .iter()
                            .map(|&e| e as usize)
                            .filter(|&e| e < count)
                            .collect();
                        (set.len() as f64, set.iter().map(|&e| expert_bytes(e)).sum())
                    }
                    None => {
                        let e = count as f64;
                        let miss = (1.0 - top_k as f64 / e).max(0.0);
                        let touched = e * (1.0 - miss.powi(at.tokens as i32));
                        let mean = (0..count).map(expert_bytes).sum::<u64>() as f64 / e.max(1.0);
                        (touched, (touched * mean).round() as u64)
                    }
                };
                c.weight_bytes = bytes;
                c.experts_touched = Some(touched);
                // Per (row, pick): gate, up and down products, SwiGLU, the weighted combine.
                let hidden = g.buffer(*x).cols as u64;
                let inter = experts.gate.first().map_or(0, |&w| g.weight(w).shape[0]) as u64;
                c.flops = rows(*x) * top_k as u64 * (6 * hidden * inter + 5 * inter + 2 * hidden);
            }
            Op::Sample { logits, .. } => c.flops = 2 * elems(*logits),
        }
        c
    }
}

impl Graph {
    /// Buffers the host reads after every step (samples; logits and hidden states for tests):
    /// they must live to the end of the forward.
    pub fn host_outputs(&self) -> Vec<BufId> {
        let mut out = vec![self.samples, self.logits];
        out.extend(&self.hidden);
        out
    }

    /// Rows of buffer `b` in a pass over `tokens` window rows predicting `out` of them.
    pub fn buffer_rows(&self, b: BufId, tokens: usize, out: usize) -> usize {
        match self.buffer(b).rows {
            super::Rows::Tokens => tokens,
            super::Rows::Out => out,
        }
    }

    /// Bytes of buffer `b` in that pass (every element is one 4-byte word, f32 or u32).
    pub fn buffer_bytes(&self, b: BufId, tokens: usize, out: usize) -> usize {
        self.buffer_rows(b, tokens, out) * self.buffer(b).cols * 4
    }

    /// Token ids a step may feed: the rows of the smallest embedding table the graph gathers
    /// from (`Step::check` bounds every id by it on every backend).
    pub fn token_rows(&self) -> usize {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Embed { table, .. } => Some(self.weight(*table).shape[0]),
                _ => None,
            })
            .min()
            .unwrap_or(0)
    }

    /// First and last op index that touches each buffer (`None` for a buffer no op uses), with
    /// `host_reads` kept alive past the last op (index `ops.len()`) and the input ids, which
    /// the host writes before the first op, alive from op 0.
    pub fn lifetimes(&self, host_reads: &[BufId]) -> Vec<Option<(usize, usize)>> {
        let order: Vec<usize> = (0..self.ops.len()).collect();
        self.lifetimes_at(host_reads, &order)
    }

    /// `lifetimes` when op `i` runs at position `at[i]` (non-decreasing): a backend that
    /// computes an op inside an earlier op's pass gives it that op's index, so what it writes
    /// there is live from there on.
    pub fn lifetimes_at(&self, host_reads: &[BufId], at: &[usize]) -> Vec<Option<(usize, usize)>> {
        let mut life: Vec<Option<(usize, usize)>> = vec![None; self.buffers.len()];
        let mut touch = |b: BufId, i: usize| {
            let l = &mut life[b.0];
            *l = Some(match *l {
                None => (i, i),
                Some((a, z)) => (a.min(i), z.max(i)),
            });
        };
        for (i, op) in self.ops.iter().enumerate() {
            for b in op.buffers() {
                touch(b, at[i]);
            }
        }
        for &b in host_reads {
            touch(b, self.ops.len());
        }
        if let Some((_, z)) = life[self.input_ids.0] {
            life[self.input_ids.0] = Some((0, z));
        }
        life
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The costs of the ops whose counts are simple to state, on the tiny shape, each weight
    /// stored in bf16.
    #[test]
    fn costs_follow_the_shapes() {
        let c = crate::synthetic::shape_config("tiny").unwrap();
        let g = crate::model::llada2::build(&c);
        let bf16 = |w: WeightId| g.weight(w).shape.iter().product::<usize>() as u64 * 2;
        let at = |tokens, routed| CostOf {
            tokens,
            out: 2,
            start: 10,
            stored: &bf16,
            routed,
        };
        let (mut matmuls, mut attentions, mut experts) = (0, 0, 0);
        for op in &g.ops {
            let cost = op.cost(&g, &at(5, None));
            match op {
                Op::MatMul { weight, out, .. } => {
                    let s = &g.weight(*weight).shape;
                    let rows = g.buffer_rows(*out, 5, 2);
                    assert_eq!(cost.flops, (2 * rows * s[0] * s[1]) as u64);
                    assert_eq!(cost.weight_bytes, bf16(*weight));
                    matmuls += 1;
                }
                Op::Attention { heads, .. } => {
                    let kv = (2 * heads.kv * heads.dim * 4) as u64;
                    assert_eq!((cost.kv_read, cost.kv_written), (kv * 15, kv * 5));
                    attentions += 1;
                }
                Op::MoeExperts { experts: set, .. } => {
                    // One token reads exactly its top-k experts; known routing reads the
                    // distinct ones named.
                    let one = op.cost(&g, &at(1, None));
                    let k = c.num_experts_per_tok as f64;
                    assert!((one.experts_touched.unwrap() - k).abs() < 1e-9);
                    let named = op.cost(&g, &at(5, Some(&[0, 1, 1, 0, 1])));
                    let per = bf16(set.gate[0]) + bf16(set.up[0]) + bf16(set.down[0]);
                    assert_eq!(named.experts_touched, Some(2.0));
                    assert_eq!(named.weight_bytes, 2 * per);
                    assert!(cost.experts_touched.unwrap() > k);
                    experts += 1;
                }
                _ => {}
            }
            assert!(cost.activation_bytes > 0, "{op:?}");
        }
        assert!(matmuls > 0 && attentions == c.num_hidden_layers && experts > 0);
    }

    #[test]
    fn every_buffer_but_the_ids_is_written_before_it_is_read() {
        for shape in ["tiny", "mini"] {
            let c = crate::synthetic::shape_config(shape).unwrap();
            let g = crate::model::llada2::build(&c);
            let mut written = vec![false; g.buffers.len()];
            written[g.input_ids.0] = true;
            for op in &g.ops {
                for b in op.reads() {
                    assert!(written[b.0], "{shape}: {} read unwritten", g.buffer(b).name);
                }
                for b in op.writes() {
                    written[b.0] = true;
                }
                for w in op.weights() {
                    assert!(w.0 < g.weights.len());
                }
            }
            let life = g.lifetimes(&g.host_outputs());
            for b in g.host_outputs() {
                assert_eq!(life[b.0].unwrap().1, g.ops.len());
            }
            assert_eq!(life[g.input_ids.0].unwrap().0, 0);
            // Every weight the graph declares is read by some op.
            let mut used = vec![false; g.weights.len()];
            for op in &g.ops {
                for w in op.weights() {
                    used[w.0] = true;
                }
            }
            assert!(
                used.iter().all(|&u| u),
                "{shape}: a declared weight no op reads"
            );
        }
    }
}

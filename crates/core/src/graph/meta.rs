//! What each op reads, writes and is: the one table the backends' buffer planners use, so a new
//! op is described here once instead of in every planner.

use super::{BufId, Graph, Op, WeightId};

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
            Op::Add { a, b, .. } => vec![*a, *b],
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
            Op::RmsNorm { weight, .. } | Op::MatMul { weight, .. } => vec![*weight],
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

    pub fn family(&self) -> OpFamily {
        match self {
            Op::Embed { .. } => OpFamily::Embed,
            Op::RmsNorm { .. } => OpFamily::Norm,
            Op::MatMul { .. } => OpFamily::MatMul,
            Op::QkNormRope { .. } => OpFamily::Rope,
            Op::Attention { .. } => OpFamily::Attention,
            Op::Add { .. } | Op::SwiGlu { .. } | Op::TakeLastRows { .. } => OpFamily::Elementwise,
            Op::MoeRoute { .. } | Op::MoeExperts { .. } => OpFamily::Moe,
            Op::Sample { .. } => OpFamily::Sample,
        }
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

    /// Bytes of buffer `b` in a pass over `tokens` window rows predicting `out` of them (every
    /// element is one 4-byte word, f32 or u32).
    pub fn buffer_bytes(&self, b: BufId, tokens: usize, out: usize) -> usize {
        let d = self.buffer(b);
        let rows = match d.rows {
            super::Rows::Tokens => tokens,
            super::Rows::Out => out,
        };
        rows * d.cols * 4
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
                touch(b, i);
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

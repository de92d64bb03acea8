//! The forward pass as data: a list of ops over named buffers, built once per model by
//! `model::llada2`, compiled by each backend at load and replayed every step.
//!
//! Row counts are symbolic: a step runs over `n` window tokens (`Rows::Tokens`) and produces
//! predictions for the last `out` of them (`Rows::Out`). Everything else is fixed by the config.

mod meta;

pub use meta::{CostOf, OpCost, OpFamily};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BufId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WeightId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Rows {
    /// One row per token fed to this step.
    Tokens,
    /// One row per token whose prediction is wanted (the tail of the window).
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Elem {
    F32,
    U32,
}

#[derive(Debug, Clone, Serialize)]
pub struct BufferDesc {
    pub name: String,
    pub rows: Rows,
    pub cols: usize,
    pub elem: Elem,
}

/// How a weight is used, which tells a backend how to lay it out (and what may be quantized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WeightRole {
    /// `[out, in]` matrix multiplied by activations.
    Matrix,
    /// Table of rows gathered by token id.
    Embedding,
    /// Per-channel vector (norm weights, router bias).
    Vector,
    /// Router `[num_experts, hidden]`: kept in full precision.
    Router,
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightDesc {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: WeightRole,
}

/// The experts of one MoE layer, as stacked weight lists.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertSet {
    pub gate: Vec<WeightId>,
    pub up: Vec<WeightId>,
    pub down: Vec<WeightId>,
}

/// Routing parameters: group-limited top-k (SPEC §2, LLaDA2.0/2.1), or LLaDA2.2's block
/// routing (SPEC §3c) when `block` is set, which then ignores `n_group` and `topk_group`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Routing {
    pub num_experts: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub scaling: f32,
    pub block: Option<BlockRouting>,
}

/// LLaDA2.2: per block of `size` absolute positions (aligned to multiples of `size`), the
/// `capacity` experts with the largest block maximum of the biased score are allowed; each
/// position takes its top-k among them. A step must start on a routing-block boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockRouting {
    pub size: usize,
    pub capacity: usize,
}

/// Attention geometry shared by the rope and attention ops.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

#[derive(Debug, Clone, Serialize)]
pub enum Op {
    /// `out[i] = table[ids[i]]`.
    Embed {
        ids: BufId,
        table: WeightId,
        out: BufId,
    },
    /// `out = x / sqrt(mean(x^2) + eps) * weight`, over groups of `weight.len()` columns.
    RmsNorm {
        x: BufId,
        weight: WeightId,
        out: BufId,
        eps: f32,
    },
    /// `sum = a + b`, then `out` = `sum` RMS-normed as `RmsNorm` does: a residual add and
    /// the norm after it in one pass.
    AddRmsNorm {
        a: BufId,
        b: BufId,
        weight: WeightId,
        sum: BufId,
        out: BufId,
        eps: f32,
    },
    /// `out = x @ weight^T` for a `[out_features, in_features]` weight.
    MatMul {
        x: BufId,
        weight: WeightId,
        out: BufId,
    },
    /// In place on a fused QKV buffer: per-head RMS norm of the q and k heads (when
    /// `q_norm`/`k_norm` are set) then NeoX RoPE on the first `rot_dim` dims, at position
    /// `start + row`.
    QkNormRope {
        qkv: BufId,
        q_norm: Option<WeightId>,
        k_norm: Option<WeightId>,
        heads: Heads,
        rot_dim: usize,
        theta: f32,
        eps: f32,
    },
    /// Block-masked attention of the window's queries over the layer's KV cache plus the
    /// window's own keys; writes the window's K/V into the cache at `start..start + n`.
    Attention {
        qkv: BufId,
        layer: usize,
        heads: Heads,
        out: BufId,
    },
    /// `out = a + b`.
    Add { a: BufId, b: BufId, out: BufId },
    /// `out = silu(gate) * up`.
    SwiGlu { gate: BufId, up: BufId, out: BufId },
    /// Sigmoid router scores, expert bias for the choice only, group-limited top-k or block
    /// routing (`routing.block`); writes `top_k` expert ids (descending biased score) and
    /// normalised, scaled weights per row.
    MoeRoute {
        logits: BufId,
        bias: Option<WeightId>,
        routing: Routing,
        ids: BufId,
        weights: BufId,
    },
    /// `out[i] = sum_k weights[i,k] * swiglu_{ids[i,k]}(x[i])`, grouped by expert.
    MoeExperts {
        x: BufId,
        ids: BufId,
        weights: BufId,
        experts: ExpertSet,
        out: BufId,
    },
    /// `out = x[n - out_rows .. n]`: the rows whose predictions are wanted.
    TakeLastRows { x: BufId, out: BufId },
    /// Per row: (token, confidence) by the step's sampling parameters (greedy or seeded).
    Sample { logits: BufId, out: BufId },
}

/// A forward pass: ops in execution order over declared buffers and weights.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    pub buffers: Vec<BufferDesc>,
    pub weights: Vec<WeightDesc>,
    pub ops: Vec<Op>,
    /// `[n]` u32 token ids, written by the host each step.
    pub input_ids: BufId,
    /// `[out, vocab]` logits (kept on the device; read back only for tests).
    pub logits: BufId,
    /// `[out, SAMPLE_WORDS]` u32 (token, f32 bits of confidence, the three best ids): the only
    /// per-step readback.
    pub samples: BufId,
    /// Residual stream entering each layer (`hidden[0]` = embeddings), then the final norm.
    pub hidden: Vec<BufId>,
    pub num_layers: usize,
}

impl Graph {
    pub fn buffer(&self, id: BufId) -> &BufferDesc {
        &self.buffers[id.0]
    }

    pub fn weight(&self, id: WeightId) -> &WeightDesc {
        &self.weights[id.0]
    }

    /// The routing block of LLaDA2.2's block routing, where the graph routes that way: a step
    /// must then start on a multiple of it.
    pub fn routing_block(&self) -> Option<usize> {
        self.ops.iter().find_map(|op| match op {
            Op::MoeRoute { routing, .. } => routing.block.map(|b| b.size),
            _ => None,
        })
    }

    /// The error of a step that starts inside a routing block, if it does.
    pub fn check_routing_start(&self, start: usize) -> crate::error::Result<()> {
        match self.routing_block() {
            Some(b) if !start.is_multiple_of(b) => Err(crate::error::Error::Invalid(format!(
                "block routing: a step starts at position {start}, not on a routing block of {b}"
            ))),
            _ => Ok(()),
        }
    }

    pub fn find_buffer(&self, name: &str) -> Option<BufId> {
        self.buffers.iter().position(|b| b.name == name).map(BufId)
    }
}

/// Appends buffers and weights while the graph is built, de-duplicating weights by name (through
/// an index, so that building is linear in the number of tensors: a config with 100000 layers is
/// refused by its bounds, not by a quadratic search).
#[derive(Default)]
pub struct GraphBuilder {
    pub buffers: Vec<BufferDesc>,
    pub weights: Vec<WeightDesc>,
    pub ops: Vec<Op>,
    by_name: std::collections::HashMap<String, WeightId>,
}

impl GraphBuilder {
    pub fn buffer(
        &mut self,
        name: impl Into<String>,
        rows: Rows,
        cols: usize,
        elem: Elem,
    ) -> BufId {
        self.buffers.push(BufferDesc {
            name: name.into(),
            rows,
            cols,
            elem,
        });
        BufId(self.buffers.len() - 1)
    }

    pub fn f32(&mut self, name: impl Into<String>, rows: Rows, cols: usize) -> BufId {
        self.buffer(name, rows, cols, Elem::F32)
    }

    pub fn weight(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        role: WeightRole,
    ) -> WeightId {
        let name = name.into();
        if let Some(&id) = self.by_name.get(&name) {
            return id;
        }
        let id = WeightId(self.weights.len());
        self.by_name.insert(name.clone(), id);
        self.weights.push(WeightDesc { name, shape, role });
        id
    }

    pub fn op(&mut self, op: Op) {
        self.ops.push(op);
    }
}

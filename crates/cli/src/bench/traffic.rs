//! The bytes one forward must touch, summed from each op's `Op::cost` (core's op metadata):
//! every weight it reads (only the routed experts of each MoE layer, only the embedding rows of
//! its tokens), plus the KV cache it reads and writes. Divided by a memory bandwidth this is the
//! floor no implementation can beat.

use serde::Serialize;
use std::collections::HashMap;
use unmask_core::graph::{CostOf, Graph, Op, WeightId, WeightRole};
use unmask_core::weights::WeightStore;

/// Stored bytes of every tensor, by name (quantized tensors count at their packed size).
pub struct WeightBytes(HashMap<String, u64>);

impl WeightBytes {
    pub fn of(store: &WeightStore) -> Self {
        WeightBytes(
            store
                .iter()
                .map(|(n, t)| (n.clone(), t.bytes().len() as u64))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Bytes of every weight the graph reads (a model cut to fewer layers reads fewer).
    pub fn graph_total(&self, graph: &Graph) -> u64 {
        graph.weights.iter().map(|w| self.get(&w.name)).sum()
    }
}

/// Where a step's expert choice comes from.
pub enum Routing<'a> {
    /// Expert ids per `MoeRoute` op in graph order, `[rows * top_k]` each.
    Known(&'a [Vec<u32>]),
    /// Unknown: each token picks `top_k` of `num_experts` uniformly at random (see
    /// `CostOf::routed`).
    Expected,
}

/// Bytes by what they hold, each op's from its `Op::cost`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    pub attention_weights: u64,
    pub dense_ffn_weights: u64,
    pub router_weights: u64,
    pub shared_expert_weights: u64,
    pub routed_expert_weights: u64,
    /// Distinct experts read per MoE layer (fractional when `Routing::Expected`).
    pub experts_touched: Vec<f64>,
    pub num_experts: usize,
    pub embedding_rows: u64,
    pub lm_head_weights: u64,
    pub norm_weights: u64,
    pub kv_cache_read: u64,
    pub kv_cache_written: u64,
    /// Weights and KV cache: the floor's bytes.
    pub total: u64,
    /// Activations read and written (left out of `total`: at decode sizes a rounding error
    /// beside the weights, and mostly in caches).
    pub activations: u64,
    pub flops: u64,
    /// Weight and KV-cache bytes of each op, in graph order (what `--profile` divides by time).
    #[serde(skip)]
    pub per_op: Vec<u64>,
}

impl Traffic {
    pub fn mean_experts_touched(&self) -> f64 {
        let n = self.experts_touched.len();
        self.experts_touched.iter().sum::<f64>() / n.max(1) as f64
    }
}

/// Traffic of a step over `tokens` positions starting at `start` (the cache holds `start`).
pub fn forward_traffic(
    graph: &Graph,
    sizes: &WeightBytes,
    start: usize,
    tokens: usize,
    routing: &Routing,
) -> Traffic {
    let mut t = Traffic::default();
    let stored = |w: WeightId| sizes.get(&graph.weight(w).name);
    let mut moe_index = 0;
    for op in &graph.ops {
        let routed = match (op, routing) {
            (Op::MoeExperts { .. }, Routing::Known(lists)) => {
                Some(lists.get(moe_index).map_or(&[][..], |l| l.as_slice()))
            }
            _ => None,
        };
        let c = op.cost(
            graph,
            &CostOf {
                tokens,
                out: tokens,
                start,
                stored: &stored,
                routed,
            },
        );
        t.per_op.push(c.weight_bytes + c.kv_read + c.kv_written);
        t.kv_cache_read += c.kv_read;
        t.kv_cache_written += c.kv_written;
        t.activations += c.activation_bytes;
        t.flops += c.flops;
        // What the weights hold, for the report's breakdown.
        let bucket = match op {
            Op::Embed { .. } => &mut t.embedding_rows,
            Op::MatMul { weight, out, .. } => {
                let n = graph.weight(*weight).name.as_str();
                if *out == graph.logits {
                    &mut t.lm_head_weights
                } else if graph.weight(*weight).role == WeightRole::Router {
                    &mut t.router_weights
                } else if n.contains(".attention.") {
                    &mut t.attention_weights
                } else if n.contains(".shared_experts.") {
                    &mut t.shared_expert_weights
                } else {
                    &mut t.dense_ffn_weights
                }
            }
            Op::MoeRoute { .. } => &mut t.router_weights,
            Op::MoeExperts { experts, .. } => {
                t.num_experts = experts.gate.len();
                t.experts_touched.push(c.experts_touched.unwrap_or(0.0));
                moe_index += 1;
                &mut t.routed_expert_weights
            }
            // Norm vectors, and whatever small weights a new op reads.
            _ => &mut t.norm_weights,
        };
        *bucket += c.weight_bytes;
    }
    t.total = t.attention_weights
        + t.dense_ffn_weights
        + t.router_weights
        + t.shared_expert_weights
        + t.routed_expert_weights
        + t.embedding_rows
        + t.lm_head_weights
        + t.norm_weights
        + t.kv_cache_read
        + t.kv_cache_written;
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use unmask_core::backend::{Backend, Capture, SampleParams, Step};
    use unmask_core::model::llada2;
    use unmask_core::synthetic::{random_weights, shape_config};
    use unmask_core::weights::DType;
    use unmask_core::ReferenceBackend;

    fn tiny() -> (unmask_core::Config, Graph, WeightStore) {
        let c = shape_config("tiny").unwrap();
        let w = random_weights(&c, DType::BF16, 7).unwrap();
        (c.clone(), llada2::build(&c), w)
    }

    #[test]
    fn one_token_reads_every_dense_weight_and_top_k_experts() {
        let (c, g, w) = tiny();
        let sizes = WeightBytes::of(&w);
        let t = forward_traffic(&g, &sizes, 10, 1, &Routing::Expected);
        let moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
        assert_eq!(t.experts_touched.len(), moe_layers);
        for &e in &t.experts_touched {
            assert!((e - c.num_experts_per_tok as f64).abs() < 1e-9, "{e}");
        }
        let one_expert = 3 * c.moe_intermediate_size * c.hidden_size * 2;
        assert_eq!(
            t.routed_expert_weights,
            (moe_layers * c.num_experts_per_tok * one_expert) as u64
        );
        assert_eq!(t.lm_head_weights, (c.vocab_size * c.hidden_size * 2) as u64);
        assert_eq!(t.embedding_rows, (c.hidden_size * 2) as u64);
        let kv = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 4;
        assert_eq!(t.kv_cache_read, (kv * 11) as u64);
        assert_eq!(t.kv_cache_written, kv as u64);
        // Everything but the unrouted experts and the unread embedding rows.
        let unread_experts = moe_layers * (c.num_experts - c.num_experts_per_tok) * one_expert;
        let unread_rows = (c.vocab_size - 1) * c.hidden_size * 2;
        assert_eq!(
            t.total - t.kv_cache_read - t.kv_cache_written,
            sizes.graph_total(&g) - (unread_experts + unread_rows) as u64
        );
        assert_eq!(t.per_op.len(), g.ops.len());
        assert_eq!(t.per_op.iter().sum::<u64>(), t.total);
    }

    #[test]
    fn known_routing_counts_the_distinct_experts_the_reference_chose() {
        let (c, g, w) = tiny();
        let sizes = WeightBytes::of(&w);
        let mut b = ReferenceBackend::new(g.clone(), &w, &mut |_, _| {}).unwrap();
        let tokens: Vec<u32> = (0..12).map(|i| i * 37 % c.vocab_size as u32).collect();
        b.step(&Step {
            tokens: &tokens,
            start: 0,
            keep: 0,
            block_length: 4,
            out_rows: 4,
            sampling: SampleParams::greedy(0, c.vocab_size as u32),
            capture: Capture::Samples,
        })
        .unwrap();
        let routing = b.last_routing().unwrap();
        assert_eq!(routing.len(), c.num_hidden_layers - c.first_k_dense_replace);
        let t = forward_traffic(&g, &sizes, 0, tokens.len(), &Routing::Known(&routing));
        let one_expert = (3 * c.moe_intermediate_size * c.hidden_size * 2) as u64;
        for (layer, ids) in routing.iter().enumerate() {
            assert_eq!(ids.len(), tokens.len() * c.num_experts_per_tok);
            let distinct: BTreeSet<u32> = ids.iter().copied().collect();
            assert_eq!(t.experts_touched[layer], distinct.len() as f64);
            assert!(distinct.len() >= c.num_experts_per_tok);
        }
        let touched: f64 = t.experts_touched.iter().sum();
        assert_eq!(t.routed_expert_weights, touched as u64 * one_expert);
    }
}

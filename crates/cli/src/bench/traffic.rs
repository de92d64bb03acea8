//! The bytes one forward must touch, from the graph: every weight it reads (only the routed
//! experts of each MoE layer, only the embedding rows of its tokens), plus the KV cache it reads
//! and writes. Activations are left out: at decode sizes they are a rounding error beside the
//! weights. Divided by a memory bandwidth this is the floor no implementation can beat.

use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use unmask_core::graph::{Graph, Op, WeightRole};
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
    /// Unknown: each token picks `top_k` of `num_experts` uniformly at random, independently.
    /// Exact for a single token; an upper estimate for a window of a trained model, whose
    /// tokens agree on experts more often than chance.
    Expected,
}

/// Bytes by what they hold. K/V are counted as f32, as the reference backend stores them.
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
    pub total: u64,
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
    let name = |w: unmask_core::graph::WeightId| graph.weight(w).name.as_str();
    let mut moe_index = 0;
    for op in &graph.ops {
        match op {
            Op::Embed { table, .. } => {
                let rows = graph.weight(*table).shape[0].max(1) as u64;
                t.embedding_rows += sizes.get(name(*table)) / rows * tokens as u64;
            }
            Op::RmsNorm { weight, .. } => t.norm_weights += sizes.get(name(*weight)),
            Op::QkNormRope { q_norm, k_norm, .. } => {
                for w in q_norm.iter().chain(k_norm) {
                    t.norm_weights += sizes.get(name(*w));
                }
            }
            Op::MatMul { weight, out, .. } => {
                let n = name(*weight);
                let b = sizes.get(n);
                if *out == graph.logits {
                    t.lm_head_weights += b;
                } else if graph.weight(*weight).role == WeightRole::Router {
                    t.router_weights += b;
                } else if n.contains(".attention.") {
                    t.attention_weights += b;
                } else if n.contains(".shared_experts.") {
                    t.shared_expert_weights += b;
                } else {
                    t.dense_ffn_weights += b;
                }
            }
            Op::Attention { heads, .. } => {
                let per_position = (2 * heads.kv * heads.dim * 4) as u64;
                t.kv_cache_read += per_position * (start + tokens) as u64;
                t.kv_cache_written += per_position * tokens as u64;
            }
            Op::MoeRoute { bias, .. } => {
                if let Some(b) = bias {
                    t.router_weights += sizes.get(name(*b));
                }
            }
            Op::MoeExperts { experts, ids, .. } => {
                let expert_bytes = |e: usize| {
                    sizes.get(name(experts.gate[e]))
                        + sizes.get(name(experts.up[e]))
                        + sizes.get(name(experts.down[e]))
                };
                let count = experts.gate.len();
                t.num_experts = count;
                let top_k = graph.buffer(*ids).cols;
                match routing {
                    Routing::Known(lists) => {
                        let touched: BTreeSet<usize> = lists
                            .get(moe_index)
                            .map(|l| l.iter().map(|&e| e as usize).filter(|&e| e < count))
                            .into_iter()
                            .flatten()
                            .collect();
                        t.routed_expert_weights +=
                            touched.iter().map(|&e| expert_bytes(e)).sum::<u64>();
                        t.experts_touched.push(touched.len() as f64);
                    }
                    Routing::Expected => {
                        let e = count as f64;
                        let miss = (1.0 - top_k as f64 / e).max(0.0);
                        let touched = e * (1.0 - miss.powi(tokens as i32));
                        let mean = (0..count).map(expert_bytes).sum::<u64>() as f64 / e.max(1.0);
                        t.routed_expert_weights += (touched * mean).round() as u64;
                        t.experts_touched.push(touched);
                    }
                }
                moe_index += 1;
            }
            Op::Add { .. } | Op::SwiGlu { .. } | Op::TakeLastRows { .. } | Op::Sample { .. } => {}
        }
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

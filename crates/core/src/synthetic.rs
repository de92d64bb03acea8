//! Models that exist only in memory: the real LLaDA2.0-mini / -flash shapes (optionally with fewer
//! layers) filled with seeded random weights, so any machine can measure real per-layer costs and
//! test large-tensor paths without downloading 30 GB.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::llada2;
use crate::weights::{DType, Tensor, WeightStore};

/// The published shapes (SPEC §1).
pub fn shape_config(name: &str) -> Result<Config> {
    let (hidden, layers, heads, dense, moe_inter) = match name {
        "mini" => (2048, 20, 16, 5120, 512),
        "flash" => (4096, 32, 32, 9216, 1024),
        "tiny" => (96, 3, 4, 192, 48),
        other => {
            return Err(Error::Invalid(format!(
                "unknown shape `{other}` (mini, flash, tiny)"
            )))
        }
    };
    let tiny = name == "tiny";
    let c = Config {
        model_type: "llada2_moe".into(),
        vocab_size: if tiny { 3840 } else { 157_184 },
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: if tiny { 2 } else { 4 },
        head_dim: if tiny { 32 } else { 128 },
        intermediate_size: dense,
        moe_intermediate_size: moe_inter,
        num_experts: if tiny { 16 } else { 256 },
        num_experts_per_tok: if tiny { 4 } else { 8 },
        n_group: if tiny { 4 } else { 8 },
        topk_group: if tiny { 2 } else { 4 },
        num_shared_experts: 1,
        first_k_dense_replace: 1,
        routed_scaling_factor: 2.5,
        expert_bias: true,
        partial_rotary_factor: 0.5,
        rms_norm_eps: 1e-6,
        rope_theta: 600_000.0,
        max_position_embeddings: if tiny { 4096 } else { 32_768 },
        use_qk_norm: true,
        tie_word_embeddings: false,
    };
    c.validate()?;
    Ok(c)
}

/// A small, fast generator (SplitMix64) for reproducible weights.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Approximately normal (sum of four uniforms), mean 0 and standard deviation `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        let s = self.symmetric() + self.symmetric() + self.symmetric() + self.symmetric();
        // Var of one symmetric uniform is 1/3: four of them sum to variance 4/3.
        s * std * (3.0f32 / 4.0).sqrt()
    }
}

/// Random weights for every tensor the graph reads, in `dtype` (bf16, f16 or f32). Matrices are
/// N(0, 0.02) like the checkpoints' initialisation, norms are near 1, expert biases small.
/// A quantized `dtype` gives the bf16 model's values with the tensors a quantized checkpoint
/// packs (`quant::QuantPlan`) quantized one at a time.
pub fn random_weights(c: &Config, dtype: DType, seed: u64) -> Result<WeightStore> {
    let mut store = WeightStore::default();
    let quant = dtype.quant().map(crate::quant::QuantPlan::new);
    let graph = llada2::build(c);
    let dtype = if quant.is_some() { DType::BF16 } else { dtype };
    for (i, w) in graph.weights.iter().enumerate() {
        let (name, shape) = (w.name.clone(), w.shape.clone());
        let numel: usize = shape.iter().product();
        let mut rng = SplitMix(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let (dt, values): (DType, Box<dyn FnMut() -> f32>) = if name.ends_with("expert_bias") {
            (DType::F32, Box::new(move || 0.05 * rng.symmetric()))
        } else if name.contains("norm") {
            (dtype, Box::new(move || 1.0 + 0.1 * rng.symmetric()))
        } else {
            (dtype, Box::new(move || rng.normal(0.02)))
        };
        let bytes = encode(dt, numel, values);
        let mut t = Tensor::from_bytes(dt, shape, bytes)?;
        if let Some(plan) = quant.filter(|p| p.applies_to(w.role)) {
            t = crate::quant::quantize_tensor(plan.format, &t)?.0;
        }
        store.insert(name, t);
    }
    Ok(store)
}

fn encode(dtype: DType, numel: usize, mut next: Box<dyn FnMut() -> f32 + '_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(dtype.bytes_for(numel));
    for _ in 0..numel {
        let v = next();
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes()),
            DType::Q8_0 | DType::Q4 => {
                unreachable!("random_weights encodes quantized models as bf16")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_published_parameter_counts() {
        let (total, active) = llada2::parameter_counts(&shape_config("mini").unwrap());
        assert!((16.0e9..16.5e9).contains(&(total as f64)), "{total}");
        assert!((1.3e9..1.5e9).contains(&(active as f64)), "{active}");
        let (total, active) = llada2::parameter_counts(&shape_config("flash").unwrap());
        assert!((102.0e9..104.0e9).contains(&(total as f64)), "{total}");
        assert!((6.0e9..6.3e9).contains(&(active as f64)), "{active}");
    }

    #[test]
    fn random_weights_have_the_graph_shapes() {
        let mut c = shape_config("tiny").unwrap();
        c.num_hidden_layers = 2;
        let w = random_weights(&c, DType::BF16, 1).unwrap();
        w.check_shapes(&llada2::expected_tensors(&c)).unwrap();
    }
}

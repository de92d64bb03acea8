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
        expert_capacity: 0,
        block_size: 32,
        delete_token_id: None,
        split_token_id: None,
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
    random_weights_on(c, dtype, seed, crate::reference::parallel::threads())
}

/// `random_weights` on `threads` threads. Each tensor has its own generator, keyed by its index,
/// so the values do not depend on which thread makes which tensor (a 2-layer mini model takes
/// seconds instead of tens of seconds, the whole model minutes instead of tens of minutes).
fn random_weights_on(c: &Config, dtype: DType, seed: u64, threads: usize) -> Result<WeightStore> {
    let quant = dtype.quant().map(crate::quant::QuantPlan::new);
    let graph = llada2::build(c);
    let dtype = if quant.is_some() { DType::BF16 } else { dtype };
    let make = |i: usize| -> Result<Tensor> {
        let w = &graph.weights[i];
        let (name, shape) = (&w.name, w.shape.clone());
        let numel: usize = shape.iter().product();
        let mut rng = SplitMix(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let (dt, bytes) = if name.ends_with("expert_bias") {
            (
                DType::F32,
                encode(DType::F32, numel, || 0.05 * rng.symmetric()),
            )
        } else if name.contains("norm") {
            (dtype, encode(dtype, numel, || 1.0 + 0.1 * rng.symmetric()))
        } else {
            (dtype, encode(dtype, numel, || rng.normal(0.02)))
        };
        let mut t = Tensor::from_bytes(dt, shape, bytes)?;
        if let Some(plan) = quant.filter(|p| p.applies_to(w.role)) {
            t = crate::quant::quantize_tensor(plan.format, &t)?.0;
        }
        Ok(t)
    };
    // Largest first, so no thread is left with a big tensor at the end.
    let mut order: Vec<usize> = (0..graph.weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(graph.weights[i].shape.iter().product::<usize>()));
    let mut made: Vec<Option<Tensor>> = vec![None; order.len()];
    for (i, t) in each_on_threads(&order, threads, &make) {
        made[i] = Some(t?);
    }
    let mut store = WeightStore::default();
    for (w, t) in graph.weights.iter().zip(made) {
        store.insert(w.name.clone(), t.expect("every tensor was made"));
    }
    Ok(store)
}

/// `(i, f(i))` for every `i` of `items`, each thread taking the next item as it finishes one.
fn each_on_threads<T: Send>(
    items: &[usize],
    threads: usize,
    f: &(dyn Fn(usize) -> T + Sync),
) -> Vec<(usize, T)> {
    #[cfg(not(target_arch = "wasm32"))]
    if threads > 1 {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        return std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.min(items.len()))
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        while let Some(&i) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                            out.push((i, f(i)));
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("weight generator thread panicked"))
                .collect()
        });
    }
    let _ = threads;
    items.iter().map(|&i| (i, f(i))).collect()
}

/// A tensor of `values` stored as `dtype` (quantized formats packed from the f32 values), for
/// tests and benches that build small graphs by hand.
pub fn tensor(dtype: DType, shape: &[usize], values: &[f32]) -> Result<Tensor> {
    match dtype.quant() {
        Some(f) => {
            let t = Tensor::from_f32(shape.to_vec(), values)?;
            Ok(crate::quant::quantize_tensor(f, &t)?.0)
        }
        None => {
            let mut next = values.iter().copied();
            let bytes = encode(dtype, values.len(), || next.next().unwrap_or(0.0));
            Tensor::from_bytes(dtype, shape.to_vec(), bytes)
        }
    }
}

/// `numel` values of `next()` in `dtype`, written in place (generic, so the generator inlines:
/// this loop is most of the time a synthetic model takes to build).
fn encode(dtype: DType, numel: usize, mut next: impl FnMut() -> f32) -> Vec<u8> {
    let mut out = vec![0u8; dtype.bytes_for(numel)];
    match dtype {
        DType::F32 => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&next().to_le_bytes());
            }
        }
        DType::BF16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(next()).to_bits().to_le_bytes());
            }
        }
        DType::F16 => {
            for c in out.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(next()).to_bits().to_le_bytes());
            }
        }
        DType::Q8_0 | DType::Q4 => unreachable!("random_weights encodes quantized models as bf16"),
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

    #[test]
    fn random_weights_do_not_depend_on_the_thread_count() {
        let mut c = shape_config("tiny").unwrap();
        c.num_hidden_layers = 2;
        for dtype in [DType::BF16, DType::Q4] {
            let one = random_weights_on(&c, dtype, 5, 1).unwrap();
            let three = random_weights_on(&c, dtype, 5, 3).unwrap();
            assert_eq!(one.len(), three.len());
            for ((n1, t1), (n3, t3)) in one.iter().zip(three.iter()) {
                assert_eq!((n1, t1.dtype, &t1.shape), (n3, t3.dtype, &t3.shape));
                assert_eq!(t1.bytes(), t3.bytes(), "{n1}");
            }
            // A different seed gives different weights.
            let other = random_weights_on(&c, dtype, 6, 3).unwrap();
            let name = "lm_head.weight";
            assert_ne!(
                other.get(name).unwrap().bytes(),
                one.get(name).unwrap().bytes()
            );
        }
    }
}

//! Choosing which tensors of a model are quantized, and quantizing them (for `unmask quantize`
//! and for `--quantize` at load).

use super::{quantize_rows, BlockStats, QuantFormat};
use crate::error::{Error, Result};
use crate::graph::{Graph, WeightRole};
use crate::weights::{DType, Tensor, WeightStore};
use serde::Serialize;

/// What to quantize: every matrix multiplied by activations (attention, dense and expert FFNs,
/// shared experts, lm_head) and, unless told otherwise, the embedding table. Norms, router
/// weights and expert biases stay in full precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantPlan {
    pub format: QuantFormat,
    pub embedding: bool,
}

impl QuantPlan {
    pub fn new(format: QuantFormat) -> Self {
        QuantPlan {
            format,
            embedding: true,
        }
    }

    pub fn applies_to(&self, role: WeightRole) -> bool {
        match role {
            WeightRole::Matrix => true,
            WeightRole::Embedding => self.embedding,
            WeightRole::Vector | WeightRole::Router => false,
        }
    }
}

/// One quantized tensor, for `--json` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub format: QuantFormat,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub rel_rmse: f64,
    #[serde(skip)]
    pub stats: BlockStats,
}

impl TensorReport {
    pub fn new(name: &str, t: &Tensor, format: QuantFormat, stats: BlockStats) -> Self {
        let params = t.numel() as u64;
        let bytes = t.bytes().len() as u64;
        TensorReport {
            name: name.to_string(),
            shape: t.shape.clone(),
            format,
            params,
            bytes,
            bits_per_weight: 8.0 * bytes as f64 / params.max(1) as f64,
            rel_rmse: stats.rel_rmse(),
            stats,
        }
    }
}

/// Quantizes a full-precision (f32, f16 or bf16) 1-D or 2-D tensor, reading it row by row.
pub fn quantize_tensor(format: QuantFormat, t: &Tensor) -> Result<(Tensor, BlockStats)> {
    if let Some(f) = t.dtype.quant() {
        return Err(Error::Invalid(format!(
            "the tensor is already quantized ({f}); quantize a full-precision checkpoint"
        )));
    }
    let (rows, cols) = match t.shape.as_slice() {
        [c] => (1, *c),
        [r, c] => (*r, *c),
        s => {
            return Err(Error::Invalid(format!(
                "only 1-D and 2-D tensors can be quantized, not shape {s:?}"
            )))
        }
    };
    let row_bytes = t.dtype.bytes_for(cols);
    let src = t.bytes();
    let dtype = t.dtype;
    let (bytes, stats) = quantize_rows(format, rows, cols, &|r, out| {
        dtype.widen_into(&src[r * row_bytes..(r + 1) * row_bytes], out)
    })?;
    Ok((
        Tensor::from_bytes(DType::from_quant(format), t.shape.clone(), bytes)?,
        stats,
    ))
}

/// A copy of `store` with the tensors `plan` selects quantized (the others are shared, not
/// copied). Tensors already in the plan's format are kept as they are.
pub fn quantize_weights(
    graph: &Graph,
    store: &WeightStore,
    plan: &QuantPlan,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(WeightStore, Vec<TensorReport>)> {
    let selected: Vec<&str> = graph
        .weights
        .iter()
        .filter(|w| plan.applies_to(w.role))
        .map(|w| w.name.as_str())
        .collect();
    let mut out = store.clone();
    let mut reports = Vec::new();
    for (i, name) in selected.iter().enumerate() {
        let t = store.get(name)?;
        if t.dtype == DType::from_quant(plan.format) {
            progress(i + 1, selected.len());
            continue;
        }
        let (q, stats) = quantize_tensor(plan.format, t)
            .map_err(|e| Error::Invalid(format!("quantizing `{name}` to {}: {e}", plan.format)))?;
        reports.push(TensorReport::new(name, &q, plan.format, stats));
        out.insert(*name, q);
        progress(i + 1, selected.len());
    }
    Ok((out, reports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::llada2;
    use crate::synthetic::{random_weights, shape_config};

    #[test]
    fn the_plan_quantizes_matrices_and_embedding_only() {
        let c = shape_config("tiny").unwrap();
        let graph = llada2::build(&c);
        let store = random_weights(&c, DType::BF16, 3).unwrap();
        let plan = QuantPlan::new(QuantFormat::Q4);
        let (q, reports) = quantize_weights(&graph, &store, &plan, &mut |_, _| {}).unwrap();
        for w in &graph.weights {
            let t = q.get(&w.name).unwrap();
            let quantized = matches!(w.role, WeightRole::Matrix | WeightRole::Embedding);
            assert_eq!(t.dtype == DType::Q4, quantized, "{} ({:?})", w.name, w.role);
            assert_eq!(t.shape, w.shape);
        }
        assert!(q.get("lm_head.weight").unwrap().dtype == DType::Q4);
        assert!(q.get("model.layers.1.mlp.gate.weight").unwrap().dtype == DType::BF16);
        assert!(q.get("model.layers.1.mlp.gate.expert_bias").unwrap().dtype == DType::F32);
        assert!(reports.iter().all(|r| r.rel_rmse > 0.0 && r.rel_rmse < 0.1));
        // Quantizing again keeps the packed tensors; a different format is refused.
        let (again, r2) = quantize_weights(&graph, &q, &plan, &mut |_, _| {}).unwrap();
        assert!(r2.is_empty());
        assert_eq!(again.len(), q.len());
        let other = QuantPlan::new(QuantFormat::Q8_0);
        assert!(quantize_weights(&graph, &q, &other, &mut |_, _| {}).is_err());
    }

    #[test]
    fn row_reads_follow_the_source_dtype() {
        let values: Vec<f32> = (0..3 * 40).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::from_f32(vec![3, 40], &values).unwrap();
        let (q, st) = quantize_tensor(QuantFormat::Q8_0, &t).unwrap();
        assert_eq!(q.shape, vec![3, 40]);
        let back = q.to_f32();
        let max = values
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 0.01 / 2.0 + 1e-6, "{max}");
        assert!(st.rel_rmse() < 0.01);
        let t3 = Tensor::from_f32(vec![2, 2, 30], &values[..120]).unwrap();
        assert!(quantize_tensor(QuantFormat::Q4, &t3).is_err());
    }
}

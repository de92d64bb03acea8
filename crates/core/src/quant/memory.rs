//! Weight memory of a model per storage format, from its config alone (for `unmask inspect`).

use super::{QuantFormat, QuantPlan};
use crate::config::Config;
use crate::model::llada2;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct FormatMemory {
    /// `bf16` (the checkpoint as published), `q8_0` or `q4`.
    pub format: String,
    pub weight_bytes: u64,
    pub parameters: u64,
    pub bytes_per_parameter: f64,
    /// Parameters stored packed (matrices and the embedding table).
    pub quantized_parameters: u64,
}

/// Bytes of every tensor of `c`'s graph as a bf16 checkpoint (expert biases in f32, as
/// published) and as quantized by [`QuantPlan::new`] for each format.
pub fn memory_by_format(c: &Config) -> Vec<FormatMemory> {
    let graph = llada2::build(c);
    let mut out = Vec::new();
    for format in [None, Some(QuantFormat::Q8_0), Some(QuantFormat::Q4)] {
        let (mut bytes, mut params, mut quantized) = (0u64, 0u64, 0u64);
        for w in &graph.weights {
            let n: u64 = w.shape.iter().map(|&d| d as u64).product();
            params += n;
            let plan = format.map(QuantPlan::new);
            if let (Some(p), [rows, cols]) = (plan, w.shape.as_slice()) {
                if p.applies_to(w.role) {
                    bytes += p.format.bytes_for(*rows, *cols) as u64;
                    quantized += n;
                    continue;
                }
            }
            bytes += n * if w.name.ends_with("expert_bias") {
                4
            } else {
                2
            };
        }
        out.push(FormatMemory {
            format: format.map_or("bf16", QuantFormat::name).to_string(),
            weight_bytes: bytes,
            parameters: params,
            bytes_per_parameter: bytes as f64 / params.max(1) as f64,
            quantized_parameters: quantized,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::shape_config;

    #[test]
    fn llada2_mini_fits_in_0_6_bytes_per_parameter_at_q4() {
        let m = memory_by_format(&shape_config("mini").unwrap());
        for f in &m {
            println!(
                "mini {}: {:.2} GB, {:.4} bytes/parameter",
                f.format,
                f.weight_bytes as f64 / 1e9,
                f.bytes_per_parameter
            );
        }
        assert!((1.99..2.01).contains(&m[0].bytes_per_parameter));
        assert!(m[1].bytes_per_parameter <= 8.5 / 8.0 + 0.01);
        assert!(
            m[2].bytes_per_parameter <= 0.6,
            "{}",
            m[2].bytes_per_parameter
        );
        // Everything but norms, router and biases is packed.
        assert!(m[2].quantized_parameters as f64 > 0.99 * m[2].parameters as f64);
    }
}

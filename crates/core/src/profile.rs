//! Per-kernel timing of a step (`Backend::profile_step`, `unmask bench --profile`): what each
//! backend reports, and the layer each op belongs to so dispatches can be counted per layer.

use crate::graph::{Graph, Op};

/// Device time of one kernel (dispatch, launch) of a profiled step.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// Index of the graph op the kernel computes (a part of).
    pub op: usize,
    /// Other ops the kernel also computes, where the backend runs them inside `op`'s kernels
    /// (wgpu's fusions); their time is in `op`'s.
    pub fused: Vec<usize>,
    /// The kernel's name as the backend knows it (`matmul_bf16`, `attention`, ...).
    pub kernel: String,
    pub seconds: f64,
}

/// The decoder layer of every op (`None` for the embedding and the head). Layer `l` ends with
/// the op that writes the residual stream entering layer `l + 1` (`Graph::hidden[l + 1]`); the
/// last layer ends where the head begins (the first op writing predicted rows).
pub fn op_layers(g: &Graph) -> Vec<Option<usize>> {
    let writer = |b| g.ops.iter().position(|op: &Op| op.writes().contains(&b));
    let head = g
        .ops
        .iter()
        .position(|op| {
            op.writes()
                .iter()
                .any(|&b| g.buffer(b).rows == crate::graph::Rows::Out)
        })
        .unwrap_or(g.ops.len());
    // ends[l]: the last op of layer l.
    let mut ends = Vec::with_capacity(g.num_layers);
    for l in 0..g.num_layers {
        let end = match g.hidden.get(l + 1) {
            Some(&b) if l + 1 < g.num_layers => writer(b),
            _ => head.checked_sub(1),
        };
        match end {
            Some(e) => ends.push(e),
            None => break,
        }
    }
    let first = g
        .hidden
        .first()
        .and_then(|&b| writer(b))
        .map_or(0, |e| e + 1);
    (0..g.ops.len())
        .map(|i| {
            if i < first || i >= head {
                return None;
            }
            ends.iter().position(|&e| i <= e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_op_is_in_its_layer_and_the_ends_are_not() {
        let c = crate::synthetic::shape_config("tiny").unwrap();
        let g = crate::model::llada2::build(&c);
        let layers = op_layers(&g);
        assert_eq!(layers.len(), g.ops.len());
        assert_eq!(layers[0], None, "the embedding");
        assert_eq!(*layers.last().unwrap(), None, "the sampler");
        for (op, l) in g.ops.iter().zip(&layers) {
            if let Op::Attention { layer, .. } = op {
                assert_eq!(*l, Some(*layer));
            }
            if matches!(
                op,
                Op::Sample { .. } | Op::TakeLastRows { .. } | Op::Embed { .. }
            ) {
                assert_eq!(*l, None, "{op:?}");
            }
        }
        // Layers run in order, each a contiguous run of ops, and every layer has some.
        let seen: Vec<usize> = layers.iter().flatten().copied().collect();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        for l in 0..g.num_layers {
            assert!(seen.contains(&l), "layer {l} has no ops");
        }
        // A MoE layer holds its routing and experts.
        for (op, l) in g.ops.iter().zip(&layers) {
            if matches!(op, Op::MoeRoute { .. } | Op::MoeExperts { .. }) {
                assert!(l.is_some());
            }
        }
    }
}

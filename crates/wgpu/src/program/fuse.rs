//! Ops the WGSL backend runs inside another op's dispatches, found once at load.
//!
//! The shared expert: LLaDA2's MoE block computes `routed + down(silu(gate(x)) * up(x))`, six
//! ops after `MoeExperts` (three matmuls, SwiGLU, the add). When the shared expert is one
//! expert wide (`gate` is `[inter, hidden]` like a routed expert's), it is stacked after the
//! routed experts as expert `E`, every token is routed to it as well, and the combine adds it
//! after the routed sum (the reference's order): the block is the expert kernels' four
//! dispatches instead of nine.
//!
//! The router: the product that gives a token-routing `MoeRoute` its logits is computed by the
//! routing dispatch itself (a workgroup per token, an invocation per expert, dot products in
//! the matmul kernels' column order), which still writes the logits.
//!
//! The residual: the op after the block that adds its output to the residual stream (`Add`, or
//! the next layer's `AddRmsNorm`) is computed by the combine, a workgroup per token that forms
//! the sum and its norm as the norm kernel does (same column split and reduction tree).
//!
//! An absorbed op runs at its host op's place, so the arena plans every buffer with the ops'
//! `positions` (an absorbed op at its host's index): a buffer the host writes early is never
//! given a bin that is still being read there.

use unmask_core::graph::{BufId, Graph, Op, WeightId};

/// The shared expert of one `MoeExperts` op, computed by its dispatches.
#[derive(Debug, Clone, Copy)]
pub struct SharedExpert {
    pub gate: WeightId,
    pub up: WeightId,
    pub down: WeightId,
    /// What the absorbed add wrote: `routed + shared`.
    pub out: BufId,
}

/// The residual add after a MoE block (and the next layer's norm, when the add is the
/// `AddRmsNorm` that starts it), computed by the block's combine.
#[derive(Debug, Clone, Copy)]
pub struct Residual {
    /// The residual stream the block output is added to.
    pub skip: BufId,
    /// `skip + block output`.
    pub sum: BufId,
    /// The norm of `sum`: (weight, eps, output).
    pub norm: Option<(WeightId, f32, BufId)>,
}

/// The router product a `MoeRoute` op computes itself: `logits = x @ weight^T`.
#[derive(Debug, Clone, Copy)]
pub struct RouterLogits {
    pub x: BufId,
    pub weight: WeightId,
}

pub struct Fusions {
    /// Per op: the op whose dispatches compute it (itself when not absorbed).
    pub host: Vec<usize>,
    /// Per op: the router product a `MoeRoute` op computes (its weight uploaded as f32).
    pub router: Vec<Option<RouterLogits>>,
    /// Per op: the shared expert a `MoeExperts` op computes.
    pub shared: Vec<Option<SharedExpert>>,
    /// Per op: the residual add (and norm) a `MoeExperts` op's combine computes.
    pub residual: Vec<Option<Residual>>,
}

impl Fusions {
    /// `stackable(shared, routed)`: whether weight `shared` is stored in the same format as
    /// `routed` (one stack holds one format); `max_binding`: bytes one binding may hold;
    /// `storage_per_stage`: storage buffers one kernel may bind (the fused routing binds 9, the
    /// fused combine 10, counting the step parameters; WebGPU's default allows 8).
    pub fn find(
        graph: &Graph,
        stackable: &mut dyn FnMut(WeightId, WeightId) -> bool,
        max_binding: u64,
        storage_per_stage: usize,
    ) -> Fusions {
        let n = graph.ops.len();
        let mut f = Fusions {
            host: (0..n).collect(),
            router: vec![None; n],
            shared: vec![None; n],
            residual: vec![None; n],
        };
        for i in (1..n).filter(|_| storage_per_stage >= 9) {
            if let Some(r) = router_before(graph, i, max_binding) {
                f.host[i - 1] = i;
                f.router[i] = Some(r);
            }
        }
        for i in 0..n {
            let Op::MoeExperts { out: routed, .. } = graph.ops[i] else {
                continue;
            };
            // The block's output and its last op. Only ops no other fusion took are absorbed.
            let free = |f: &Fusions, ops: std::ops::RangeInclusive<usize>| {
                let hosts = |j: usize| (0..n).any(|k| k != j && f.host[k] == j);
                ops.into_iter()
                    .all(|j| j < n && f.host[j] == j && !hosts(j))
            };
            let (mut y, mut last) = (routed, i);
            if let Some(s) =
                shared_expert_after(graph, i, stackable).filter(|_| free(&f, i + 1..=i + 5))
            {
                for j in i + 1..=i + 5 {
                    f.host[j] = i;
                }
                f.shared[i] = Some(s);
                (y, last) = (s.out, i + 5);
            }
            if let Some(r) = residual_after(graph, last, y)
                .filter(|_| storage_per_stage >= 10 && free(&f, last + 1..=last + 1))
            {
                f.host[last + 1] = i;
                f.residual[i] = Some(r);
            }
        }
        f
    }

    pub fn absorbed(&self, op: usize) -> bool {
        self.host[op] != op
    }

    /// The ops `host`'s dispatches compute besides it.
    pub fn absorbed_into(&self, host: usize) -> Vec<usize> {
        (0..self.host.len())
            .filter(|&j| j != host && self.host[j] == host)
            .collect()
    }

    /// Where each op runs, for the arena's lifetimes.
    pub fn positions(&self) -> &[usize] {
        &self.host
    }
}

/// The router product right before the token-routing `MoeRoute` at `i` (block routing keeps
/// its own pass: one workgroup per block would compute a whole block's logits), when its f32
/// copy fits one binding.
fn router_before(graph: &Graph, i: usize, max_binding: u64) -> Option<RouterLogits> {
    let Op::MoeRoute {
        logits, routing, ..
    } = &graph.ops[i]
    else {
        return None;
    };
    let Op::MatMul { x, weight, out } = graph.ops[i - 1] else {
        return None;
    };
    let shape = &graph.weight(weight).shape;
    let fits = (shape.iter().product::<usize>() as u64) * 4 <= max_binding;
    (out == *logits && routing.block.is_none() && fits && shape.len() == 2)
        .then_some(RouterLogits { x, weight })
}

/// The op after `last` when it adds the block output `y` to the residual stream (and norms the
/// sum over its whole row) and is the only reader of `y`.
fn residual_after(graph: &Graph, last: usize, y: BufId) -> Option<Residual> {
    let j = last + 1;
    let (a, b, sum, norm) = match *graph.ops.get(j)? {
        Op::Add { a, b, out } => (a, b, out, None),
        Op::AddRmsNorm {
            a,
            b,
            weight,
            sum,
            out,
            eps,
        } => {
            let d: usize = graph.weight(weight).shape.iter().product();
            if d != graph.buffer(sum).cols {
                return None;
            }
            (a, b, sum, Some((weight, eps, out)))
        }
        _ => return None,
    };
    let skip = match (a == y, b == y) {
        (true, false) => b,
        (false, true) => a,
        _ => return None,
    };
    let read_elsewhere = graph
        .ops
        .iter()
        .enumerate()
        .any(|(k, op)| k > j && op.reads().contains(&y));
    (!read_elsewhere && !graph.host_outputs().contains(&y)).then_some(Residual { skip, sum, norm })
}

/// `MoeExperts` at `i` followed by the builder's shared expert over the same rows, whose
/// intermediates nothing else reads, and whose matrices have a routed expert's shapes.
fn shared_expert_after(
    graph: &Graph,
    i: usize,
    stackable: &mut dyn FnMut(WeightId, WeightId) -> bool,
) -> Option<SharedExpert> {
    let ops = graph.ops.get(i..i + 6)?;
    let [Op::MoeExperts {
        x,
        experts,
        out: routed,
        ..
    }, Op::MatMul {
        x: x1,
        weight: gate,
        out: g,
    }, Op::MatMul {
        x: x2,
        weight: up,
        out: u,
    }, Op::SwiGlu {
        gate: g2,
        up: u2,
        out: act,
    }, Op::MatMul {
        x: act2,
        weight: down,
        out: sh,
    }, Op::Add { a, b, out }] = ops
    else {
        return None;
    };
    let chained = x1 == x
        && x2 == x
        && g2 == g
        && u2 == u
        && act2 == act
        && ((a == routed && b == sh) || (a == sh && b == routed));
    let shape = |w: WeightId| &graph.weight(w).shape;
    let first = |ws: &[WeightId]| ws.first().map(|&w| shape(w).clone());
    let same_shapes = Some(shape(*gate).clone()) == first(&experts.gate)
        && Some(shape(*up).clone()) == first(&experts.up)
        && Some(shape(*down).clone()) == first(&experts.down);
    // The intermediates (and the routed sum) must die inside the block.
    let private = [*routed, *g, *u, *act, *sh].iter().all(|&b| {
        graph
            .ops
            .iter()
            .enumerate()
            .all(|(j, op)| (i..i + 6).contains(&j) || !op.buffers().contains(&b))
            && !graph.host_outputs().contains(&b)
    });
    let fits = chained
        && same_shapes
        && private
        && [
            (*gate, experts.gate[0]),
            (*up, experts.up[0]),
            (*down, experts.down[0]),
        ]
        .into_iter()
        .all(|(s, r)| stackable(s, r));
    fits.then_some(SharedExpert {
        gate: *gate,
        up: *up,
        down: *down,
        out: *out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use unmask_core::synthetic::shape_config;

    /// On the builder's graph every MoE layer's router product, shared expert and residual
    /// op (the next layer's AddRmsNorm, or the last layer's Add) run inside the MoE dispatches;
    /// LLaDA2.2's block routing keeps its router product.
    #[test]
    fn the_builders_moe_layers_fuse() {
        for block_routing in [false, true] {
            let mut c = shape_config("tiny").unwrap();
            c.num_hidden_layers = 3;
            if block_routing {
                c.expert_capacity = 4;
            }
            let g = unmask_core::model::llada2::build(&c);
            let f = Fusions::find(&g, &mut |_, _| true, u64::MAX, usize::MAX);
            let moe = |i: usize| matches!(g.ops[i], Op::MoeExperts { .. });
            let routes = |i: usize| matches!(g.ops[i], Op::MoeRoute { .. });
            let layers = (0..g.ops.len()).filter(|&i| moe(i)).count();
            assert!(layers >= 2, "{layers} MoE layers");
            for i in (0..g.ops.len()).filter(|&i| moe(i)) {
                assert!(f.shared[i].is_some() && f.residual[i].is_some(), "op {i}");
            }
            for i in (0..g.ops.len()).filter(|&i| routes(i)) {
                assert_eq!(f.router[i].is_some(), !block_routing, "op {i}");
            }
            // Absorbed per MoE layer: router matmul (token routing), 5 shared-expert ops, the
            // residual op.
            let absorbed = (0..g.ops.len()).filter(|&i| f.absorbed(i)).count();
            assert_eq!(absorbed, layers * (6 + !block_routing as usize));
            // Positions never go back.
            assert!(f.positions().windows(2).all(|w| w[0] <= w[1]));
        }
    }

    /// With WebGPU's default 8 storage buffers a stage, the routing and the combine keep their
    /// inputs and outputs to that: the shared expert still joins the stack.
    #[test]
    fn eight_storage_buffers_keep_the_router_and_the_residual_apart() {
        let c = shape_config("tiny").unwrap();
        let g = unmask_core::model::llada2::build(&c);
        let f = Fusions::find(&g, &mut |_, _| true, u64::MAX, 8);
        assert!(f.router.iter().all(Option::is_none));
        assert!(f.residual.iter().all(Option::is_none));
        assert!(f.shared.iter().any(Option::is_some));
    }

    /// A shared expert in another format than the routed ones stays a separate product.
    #[test]
    fn a_shared_expert_in_another_format_is_not_stacked() {
        let c = shape_config("tiny").unwrap();
        let g = unmask_core::model::llada2::build(&c);
        let f = Fusions::find(&g, &mut |_, _| false, u64::MAX, usize::MAX);
        assert!(f.shared.iter().all(Option::is_none));
    }
}

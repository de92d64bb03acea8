//! Ops the WGSL backend runs inside another op's dispatches, found once at load.
//!
//! The shared expert: LLaDA2's MoE block computes `routed + down(silu(gate(x)) * up(x))`, six
//! ops after `MoeExperts` (three matmuls, SwiGLU, the add). When the shared expert is one
//! expert wide (`gate` is `[inter, hidden]` like a routed expert's), it is stacked after the
//! routed experts as expert `E`, every token is routed to it as well, and the combine adds it
//! after the routed sum (the reference's order): the block is the expert kernels' four
//! dispatches instead of nine.
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

pub struct Fusions {
    /// Per op: the op whose dispatches compute it (itself when not absorbed).
    pub host: Vec<usize>,
    /// Per op: the shared expert a `MoeExperts` op computes.
    pub shared: Vec<Option<SharedExpert>>,
}

impl Fusions {
    /// `stackable(shared, routed)`: whether weight `shared` is stored in the same format as
    /// `routed` (one stack holds one format).
    pub fn find(graph: &Graph, stackable: &mut dyn FnMut(WeightId, WeightId) -> bool) -> Fusions {
        let n = graph.ops.len();
        let mut f = Fusions {
            host: (0..n).collect(),
            shared: vec![None; n],
        };
        for i in 0..n {
            if let Some(s) = shared_expert_after(graph, i, stackable) {
                for j in i + 1..=i + 5 {
                    f.host[j] = i;
                }
                f.shared[i] = Some(s);
            }
        }
        f
    }

    pub fn absorbed(&self, op: usize) -> bool {
        self.host[op] != op
    }

    /// Where each op runs, for the arena's lifetimes.
    pub fn positions(&self) -> &[usize] {
        &self.host
    }
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

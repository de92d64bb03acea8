//! The activation arena, planned once at load: every graph buffer gets a bin (a device buffer)
//! sized for the largest chunk, and buffers whose lifetimes do not overlap share a bin. The
//! residual stream entering each layer, the logits and the samples stay live to the end of the
//! step so that tests can read them back.

use unmask_core::graph::Graph;

pub struct ArenaPlan {
    /// Slot of each graph buffer (`None` for buffers the arena does not hold: the token ids).
    pub bin_of: Vec<Option<usize>>,
    /// Bytes of each bin.
    pub bin_bytes: Vec<u64>,
}

impl ArenaPlan {
    pub fn total_bytes(&self) -> u64 {
        self.bin_bytes.iter().sum()
    }
}

/// Interval allocation in op order: a buffer's bin is free again after the last op that uses
/// it; a new buffer takes the smallest free bin that fits, else grows the largest free bin,
/// else opens a new one. Op `i` runs at position `at[i]` (fuse.rs: an absorbed op at its
/// host's index).
pub fn plan(graph: &Graph, rows: usize, at: &[usize]) -> ArenaPlan {
    let nb = graph.buffers.len();
    let life = graph.lifetimes_at(&graph.host_outputs(), at);
    let mut bin_of = vec![None; nb];
    let mut bin_bytes: Vec<u64> = Vec::new();
    let mut busy_until: Vec<usize> = Vec::new();
    for (i, op) in graph.ops.iter().enumerate() {
        for b in op.writes() {
            if bin_of[b.0].is_some() || b == graph.input_ids {
                continue;
            }
            // Both token and predicted rows are capped by the chunk size.
            let need = (graph.buffer_bytes(b, rows, rows) as u64).max(4);
            let free: Vec<usize> = (0..bin_bytes.len())
                .filter(|&s| busy_until[s] < at[i])
                .collect();
            let fit = free
                .iter()
                .copied()
                .filter(|&s| bin_bytes[s] >= need)
                .min_by_key(|&s| bin_bytes[s]);
            let s = match fit.or_else(|| free.iter().copied().max_by_key(|&s| bin_bytes[s])) {
                Some(s) => s,
                None => {
                    bin_bytes.push(0);
                    busy_until.push(0);
                    bin_bytes.len() - 1
                }
            };
            bin_bytes[s] = bin_bytes[s].max(need);
            busy_until[s] = life[b.0].map_or(at[i], |(_, last)| last);
            bin_of[b.0] = Some(s);
        }
    }
    ArenaPlan { bin_of, bin_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unmask_core::graph::BufId;
    use unmask_core::synthetic::shape_config;

    /// With the backend's fusions (the shared expert runs inside the expert dispatches), so
    /// that what the fused combine writes early never shares a bin with what it reads.
    #[test]
    fn live_buffers_never_share_a_bin_and_reuse_saves_memory() {
        let mut c = shape_config("tiny").unwrap();
        c.num_hidden_layers = 3;
        let g = unmask_core::model::llada2::build(&c);
        let fused = crate::program::fuse::Fusions::find(&g, &mut |_, _| true, u64::MAX, usize::MAX);
        assert!(
            fused.shared.iter().any(Option::is_some),
            "the tiny shape has a shared expert"
        );
        let at = fused.positions();
        let p = plan(&g, 32, at);
        // Check pairwise against the lifetimes.
        let life = g.lifetimes_at(&g.host_outputs(), at);
        for a in 0..g.buffers.len() {
            for b in a + 1..g.buffers.len() {
                if let (Some(sa), Some(sb)) = (p.bin_of[a], p.bin_of[b]) {
                    let ((fa, la), (fb, lb)) = (life[a].unwrap(), life[b].unwrap());
                    let overlap = fa <= lb && fb <= la;
                    assert!(
                        !(sa == sb && overlap),
                        "{} and {} share bin {sa} while both live",
                        g.buffers[a].name,
                        g.buffers[b].name
                    );
                }
            }
            if BufId(a) != g.input_ids {
                let need = g.buffer_bytes(BufId(a), 32, 32) as u64;
                assert!(p.bin_bytes[p.bin_of[a].unwrap()] >= need);
            }
        }
        let naive: u64 = (0..g.buffers.len())
            .filter(|&b| BufId(b) != g.input_ids)
            .map(|b| g.buffer_bytes(BufId(b), 32, 32) as u64)
            .sum();
        assert!(p.total_bytes() < naive, "{} vs {naive}", p.total_bytes());
    }
}

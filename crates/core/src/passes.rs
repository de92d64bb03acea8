//! A batch of steps as passes over the graph (the wgpu backend's batched forward). Each step is
//! chunked as it would be alone (`chunks::split`); chunks of different sequences then share a
//! pass when their kernels would be the same ones alone: the backend names a chunk's class
//! (which matrix kernel its rows and its predicted rows take), and only chunks of one class
//! share a pass. Every kernel computes a row the same way whatever else its pass holds, so a
//! sequence's results do not depend on its batch. A sequence's chunks run in order, one per
//! round: its next chunk is placed in a later pass than its previous one.

use crate::backend::Step;
use crate::chunks::{self, Chunk};
use crate::error::Result;

/// One sequence's chunk in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Index of the step in the batch.
    pub step: usize,
    pub chunk: Chunk,
    /// Its rows of the pass start here, its predicted rows at `out0`.
    pub row0: usize,
    pub out0: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub seqs: Vec<Placed>,
    /// Rows and predicted rows of the pass.
    pub rows: usize,
    pub out: usize,
}

impl Pass {
    /// The most rows and the most predicted rows of one sequence in the pass (the sizes its
    /// matrix kernels are chosen by).
    pub fn widest(&self) -> (usize, usize) {
        self.seqs
            .iter()
            .fold((0, 0), |(r, o), p| (r.max(p.chunk.len), o.max(p.chunk.out)))
    }
}

/// The passes of `steps`: at most `max_rows` rows and `max_seqs` sequences each; chunks share
/// a pass only when `class` gives them the same value.
pub fn plan(
    steps: &[&Step],
    max_rows: usize,
    max_seqs: usize,
    class: impl Fn(&Chunk) -> usize,
) -> Result<Vec<Pass>> {
    let mut queues = Vec::with_capacity(steps.len());
    for s in steps {
        let c = chunks::split(
            s.start,
            s.tokens.len(),
            s.out_rows,
            s.block_length,
            max_rows,
        )?;
        queues.push(c.into_iter());
    }
    let mut passes = Vec::new();
    loop {
        // This round: the next chunk of every sequence that has one, grouped by class in
        // first-seen order (so a batch of one is exactly its chunks in order).
        let mut groups: Vec<(usize, Vec<(usize, Chunk)>)> = Vec::new();
        for (i, q) in queues.iter_mut().enumerate() {
            if let Some(c) = q.next() {
                let k = class(&c);
                match groups.iter_mut().find(|(g, _)| *g == k) {
                    Some((_, v)) => v.push((i, c)),
                    None => groups.push((k, vec![(i, c)])),
                }
            }
        }
        if groups.is_empty() {
            return Ok(passes);
        }
        for (_, members) in groups {
            let mut pass = Pass {
                seqs: Vec::new(),
                rows: 0,
                out: 0,
            };
            for (step, chunk) in members {
                let full = pass.seqs.len() == max_seqs.max(1) || pass.rows + chunk.len > max_rows;
                if full && !pass.seqs.is_empty() {
                    passes.push(std::mem::replace(
                        &mut pass,
                        Pass {
                            seqs: Vec::new(),
                            rows: 0,
                            out: 0,
                        },
                    ));
                }
                pass.seqs.push(Placed {
                    step,
                    chunk,
                    row0: pass.rows,
                    out0: pass.out,
                });
                pass.rows += chunk.len;
                pass.out += chunk.out;
            }
            passes.push(pass);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Capture, SampleParams};

    fn step(tokens: &[u32], start: usize, out_rows: usize) -> Step<'_> {
        Step {
            tokens,
            start,
            keep: tokens.len(),
            block_length: 32,
            out_rows,
            sampling: SampleParams::greedy(0, 10),
            capture: Capture::Samples,
        }
    }

    /// Class: whether the chunk's rows exceed 32 (the tiles) or not (the matrix-vector kernels).
    fn wide(c: &Chunk) -> usize {
        (c.len > 32) as usize
    }

    #[test]
    fn one_step_is_its_chunks_in_order() {
        let t = [1u32; 300];
        let s = step(&t, 0, 32);
        let p = plan(&[&s], 128, 16, wide).unwrap();
        let shapes: Vec<_> = p.iter().map(|p| (p.rows, p.out, p.seqs.len())).collect();
        assert_eq!(shapes, vec![(128, 0, 1), (128, 0, 1), (44, 32, 1)]);
    }

    #[test]
    fn windows_share_passes_within_the_row_bound_and_prefills_run_apart() {
        let w = [1u32; 32];
        let long = [1u32; 100];
        let steps = [
            step(&w, 64, 32),
            step(&long, 0, 32),
            step(&w, 96, 32),
            step(&w, 32, 32),
        ];
        let refs: Vec<&Step> = steps.iter().collect();
        let p = plan(&refs, 64, 16, wide).unwrap();
        let seqs: Vec<Vec<(usize, usize, usize)>> = p
            .iter()
            .map(|p| p.seqs.iter().map(|s| (s.step, s.row0, s.out0)).collect())
            .collect();
        // Round one: the windows of steps 0, 2, 3 (two passes of at most 64 rows), the long
        // step's first chunk (64 rows, no predictions) on its own; round two: its tail.
        assert_eq!(
            seqs,
            vec![
                vec![(0, 0, 0), (2, 32, 32)],
                vec![(3, 0, 0)],
                vec![(1, 0, 0)],
                vec![(1, 0, 0)],
            ]
        );
        assert_eq!((p[2].rows, p[2].out), (64, 0));
        assert_eq!((p[3].rows, p[3].out, p[3].widest()), (36, 32, (36, 32)));
    }

    #[test]
    fn a_pass_holds_at_most_max_seqs() {
        let w = [1u32; 4];
        let steps: Vec<Step> = (0..5).map(|i| step(&w, 32 * i, 4)).collect();
        let refs: Vec<&Step> = steps.iter().collect();
        let p = plan(&refs, 128, 2, wide).unwrap();
        assert_eq!(
            p.iter().map(|p| p.seqs.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
    }
}

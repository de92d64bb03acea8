//! Several generations decoded together: each step of the loop runs the next forward of every
//! active sequence as one batched forward (`Backend::step_batch`), sequences join when a slot
//! is free and leave as they finish (continuous batching); a long prompt may be prefilled in
//! chunks, each in a forward shared with the others. The server's worker schedules the
//! same way with requests; this driver serves `unmask bench --batch` and the tests that show a
//! sequence's tokens do not depend on what it was batched with.

use super::slots::SlotPool;
use super::{DecodeParams, Decoding, Generation};
use crate::backend::{Backend, SlotStep};
use crate::chat::SpecialIds;
use crate::error::{Error, Result};

/// One sequence of a batch run: it joins once `join_after` batched forwards have run (or
/// earlier when nothing else is running) and a slot is free.
#[derive(Debug, Clone)]
pub struct BatchRequest<'a> {
    pub prompt: &'a [u32],
    pub params: DecodeParams,
    pub join_after: usize,
    /// Prompt positions per prefill forward (`Decoding::chunk_prefill`); 0: the whole prompt
    /// goes in with the first window.
    pub prefill_chunk: usize,
}

#[derive(Debug)]
pub struct BatchRun {
    /// Per request, in the order given.
    pub generations: Vec<Result<Generation>>,
    /// Sequences in each batched forward, in order.
    pub batch_sizes: Vec<usize>,
    /// Of those sequence steps, the prefill chunks.
    pub prefill_chunks: usize,
}

struct Active {
    request: usize,
    slot: usize,
    decoding: Decoding,
}

/// Decodes `requests` on `backend`, at most `max_batch` at once (and no more than its slots).
/// A backend error ends the run.
pub fn generate_batch(
    backend: &mut dyn Backend,
    ids: &SpecialIds,
    max_positions: usize,
    requests: &[BatchRequest],
    max_batch: usize,
) -> Result<BatchRun> {
    let width = max_batch.clamp(1, backend.slots());
    let mut pool = SlotPool::new(backend.slots(), usize::MAX);
    let mut generations: Vec<Option<Result<Generation>>> = requests.iter().map(|_| None).collect();
    let mut batch_sizes = Vec::new();
    let mut prefill_chunks = 0;
    let mut waiting: std::collections::VecDeque<usize> = (0..requests.len()).collect();
    let mut active: Vec<Active> = Vec::new();
    let name = backend.name();
    loop {
        // Join: in order, each once its time has come (the first at once when idle).
        while active.len() < width {
            let Some(&next) = waiting.front() else { break };
            let r = &requests[next];
            if r.join_after > batch_sizes.len() && !active.is_empty() {
                break;
            }
            waiting.pop_front();
            let chunked = |mut d: Decoding| {
                if r.prefill_chunk > 0 {
                    d.chunk_prefill(r.prefill_chunk)?;
                }
                Ok(d)
            };
            let mut d =
                match Decoding::new(ids, max_positions, r.prompt, &r.params).and_then(chunked) {
                    Ok(d) => d,
                    Err(e) => {
                        generations[next] = Some(Err(e));
                        continue;
                    }
                };
            let slot = pool
                .choose(r.prompt, &r.params)
                .ok_or_else(|| Error::Invalid("no free KV-cache slot".into()))?;
            pool.begin(backend, slot, &mut d, r.prompt, &r.params)?;
            active.push(Active {
                request: next,
                slot,
                decoding: d,
            });
        }
        if active.is_empty() {
            break;
        }
        // Leave: sequences whose decoding has ended.
        let mut steps = Vec::with_capacity(active.len());
        let mut stepping = Vec::with_capacity(active.len());
        let mut ended = Vec::new();
        for (i, a) in active.iter_mut().enumerate() {
            match a.decoding.next_step() {
                Some(step) => {
                    steps.push(SlotStep { slot: a.slot, step });
                    stepping.push(i);
                }
                None => ended.push(i),
            }
        }
        let outs = if steps.is_empty() {
            Vec::new()
        } else {
            batch_sizes.push(steps.len());
            backend.step_batch(&steps)?
        };
        drop(steps);
        for (&i, out) in stepping.iter().zip(&outs) {
            let a = &mut active[i];
            let applied = if a.decoding.pending_prefill() {
                prefill_chunks += 1;
                a.decoding.apply_prefill(out, &name)
            } else {
                a.decoding.apply(out, &name).map(|_| ())
            };
            if let Err(e) = applied {
                generations[a.request] = Some(Err(e));
                ended.push(i);
            }
        }
        ended.sort_unstable();
        for i in ended.into_iter().rev() {
            let a = active.remove(i);
            pool.end(backend, a.slot, Some(&a.decoding));
            if generations[a.request].is_none() {
                generations[a.request] = Some(a.decoding.into_result());
            }
        }
    }
    Ok(BatchRun {
        generations: generations
            .into_iter()
            .map(|g| g.unwrap_or_else(|| Err(Error::Invalid("never decoded".into()))))
            .collect(),
        batch_sizes,
        prefill_chunks,
    })
}

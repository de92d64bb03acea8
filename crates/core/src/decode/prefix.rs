//! Reusing the K/V a backend already holds: the next generation whose prompt starts with the
//! tokens the last one left final in the cache (a chat's next turn re-sends the whole history)
//! starts its first forward after them instead of recomputing them.
//!
//! Exactness: under LLaDA2's block-causal attention a position's K/V depend on the tokens of its
//! own block and the blocks before it, nothing later, and every backend computes a row the same
//! way whatever else a forward holds. So the K/V of whole blocks whose tokens (and block length)
//! match are the ones a fresh prefill would write, and the generation is token for token the
//! same (tests/tests/prefix_cache.rs).
//!
//! An entry describes one KV-cache slot of a backend, no copy. It is forgotten before a
//! generation's first step and set again only when the generation ends without a backend
//! error, so a failure (or a panic) midway leaves nothing that could be reused wrongly. A
//! backend with several slots keeps several entries (`slots.rs`: the pool, with LRU eviction
//! under a memory bound).

use super::{DecodeParams, Decoding, Generation, Keep, StepEvent};
use crate::backend::Backend;
use crate::chat::SpecialIds;
use crate::error::{Error, Result};

/// The tokens whose K/V are final in a backend's cache, and the block length they were
/// computed with.
#[derive(Debug, Clone, Default)]
pub struct KvPrefix {
    tokens: Vec<u32>,
    block_length: usize,
    reused: usize,
}

impl KvPrefix {
    /// Positions of `prompt` the cache already holds: the whole blocks (of `p.block_length`,
    /// which must be the cached one) that `prompt` shares with the cached tokens.
    pub fn reusable(&self, prompt: &[u32], p: &DecodeParams) -> usize {
        let b = p.block_length;
        if !p.use_cache || b == 0 || b != self.block_length {
            return 0;
        }
        let same = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        same / b * b
    }

    /// How many prompt positions the last generation took from the cache.
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// Nothing is reusable (the backend's cache is about to change or was reset elsewhere).
    pub fn forget(&mut self) {
        self.tokens.clear();
        self.block_length = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Before `decoding`'s first step in `slot` of `backend` (the cache this entry describes):
    /// starts it after the prompt positions the slot holds, or resets the slot when none are
    /// reusable. The entry is forgotten until [`Self::end`] says what the generation left.
    pub fn begin(
        &mut self,
        backend: &mut dyn Backend,
        slot: usize,
        decoding: &mut Decoding,
        prompt: &[u32],
        p: &DecodeParams,
    ) -> Result<usize> {
        let reused = self.reusable(prompt, p);
        self.forget();
        self.reused = reused;
        if reused == 0 {
            backend.reset_slot(slot);
        } else {
            decoding.start_cached(reused)?;
        }
        Ok(reused)
    }

    /// After a generation: what `kept` left final in the cache, `None` after a backend error
    /// (the cache may be half written).
    pub fn end(&mut self, kept: Option<&Decoding>) {
        match kept {
            Some(d) => {
                self.tokens = d.final_prefix().to_vec();
                self.block_length = d.block_length();
            }
            None => self.forget(),
        }
    }
}

/// [`super::generate`] that starts after the prompt positions `cache` holds and leaves in
/// `cache` what this generation made final. `backend` must be the one `cache` describes, and
/// nothing else may step it between generations (or `cache.forget()` first).
pub fn generate_reusing(
    backend: &mut dyn Backend,
    cache: &mut KvPrefix,
    ids: &SpecialIds,
    max_positions: usize,
    prompt: &[u32],
    p: &DecodeParams,
    on_step: &mut dyn FnMut(&StepEvent) -> Keep,
) -> Result<Generation> {
    let mut decoding = Decoding::new(ids, max_positions, prompt, p)?;
    cache.begin(backend, 0, &mut decoding, prompt, p)?;
    let name = backend.name();
    let mut failed = None;
    while let Some(step) = decoding.next_step() {
        let out = match backend.step(&step) {
            Ok(out) => out,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        match decoding.apply(&out, &name) {
            Ok(event) => {
                if !on_step(&event) {
                    failed = Some(Error::Cancelled);
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Steps that completed left final K/V whether decoding finished or its consumer stopped
    // it; after any other error the cache may be half written.
    cache.end(matches!(failed, None | Some(Error::Cancelled)).then_some(&decoding));
    match failed {
        Some(e) => Err(e),
        None => decoding.into_result(),
    }
}

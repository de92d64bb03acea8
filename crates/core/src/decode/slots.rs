//! A backend's KV-cache slots as a pool: which sequence decodes in which slot, and what the
//! idle slots still hold for a later request to reuse (a chat's next turn, a shared system
//! prompt). Idle slots keep at most `keep_positions` positions in all; above that the least
//! recently used are reset (their memory freed), never the one released last.
//!
//! A new sequence goes to the idle slot whose entry it can reuse the most of, else to an
//! empty one, else to the least recently used one.

use super::prefix::KvPrefix;
use super::{DecodeParams, Decoding};
use crate::backend::Backend;
use crate::error::Result;

#[derive(Debug, Default)]
struct Entry {
    prefix: KvPrefix,
    busy: bool,
    /// The pool's clock when the slot was last released (0: never used).
    used: u64,
}

#[derive(Debug)]
pub struct SlotPool {
    entries: Vec<Entry>,
    clock: u64,
    keep_positions: usize,
}

impl SlotPool {
    /// A pool over `slots` slots (at least 1) whose idle entries keep at most
    /// `keep_positions` positions together.
    pub fn new(slots: usize, keep_positions: usize) -> Self {
        SlotPool {
            entries: (0..slots.max(1)).map(|_| Entry::default()).collect(),
            clock: 0,
            keep_positions,
        }
    }

    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// The idle slot `prompt` should run in, `None` when every slot is busy.
    pub fn choose(&self, prompt: &[u32], p: &DecodeParams) -> Option<usize> {
        let idle = || self.entries.iter().enumerate().filter(|(_, e)| !e.busy);
        let best = idle()
            .map(|(i, e)| (i, e.prefix.reusable(prompt, p)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
            .filter(|&(_, n)| n > 0);
        if let Some((i, _)) = best {
            return Some(i);
        }
        idle()
            .min_by_key(|(i, e)| (!e.prefix.is_empty(), e.used, *i))
            .map(|(i, _)| i)
    }

    /// Takes `slot` (from [`Self::choose`]) for `decoding` and starts it after what the slot
    /// holds of `prompt` (`KvPrefix::begin`). Returns the positions reused.
    pub fn begin(
        &mut self,
        backend: &mut dyn Backend,
        slot: usize,
        decoding: &mut Decoding,
        prompt: &[u32],
        p: &DecodeParams,
    ) -> Result<usize> {
        let e = &mut self.entries[slot];
        debug_assert!(!e.busy, "slot {slot} is taken");
        e.busy = true;
        let r = e.prefix.begin(backend, slot, decoding, prompt, p);
        if r.is_err() {
            e.busy = false;
        }
        r
    }

    /// `slot` is idle again, its entry set as `KvPrefix::end` says; then least recently used
    /// idle entries are reset while the idle slots hold more than the bound.
    pub fn end(&mut self, backend: &mut dyn Backend, slot: usize, kept: Option<&Decoding>) {
        self.clock += 1;
        let e = &mut self.entries[slot];
        e.busy = false;
        e.used = self.clock;
        e.prefix.end(kept);
        if e.prefix.is_empty() {
            backend.reset_slot(slot);
        }
        loop {
            let held: usize = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.busy)
                .map(|(i, _)| backend.cached_in(i))
                .sum();
            if held <= self.keep_positions {
                return;
            }
            let victim = self
                .entries
                .iter()
                .enumerate()
                .filter(|(i, e)| !e.busy && *i != slot && backend.cached_in(*i) > 0)
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i);
            let Some(v) = victim else { return };
            self.entries[v].prefix.forget();
            backend.reset_slot(v);
        }
    }
}

//! LLaDA2.1 (SPEC §3b): masks are filled as in 2.0 (threshold, else the `num_to_transfer` most
//! confident), and every written, non-prompt token whose prediction changed with confidence
//! above `editing_threshold` is replaced. Once no mask is left the block gets up to
//! `max_post_steps` more forwards, and ends early at the first forward that edits nothing.

use super::{BlockPolicy, Writes};
use crate::backend::Sampled;
use crate::chat::SpecialIds;
use crate::decode::{schedule, DecodeParams};
use crate::error::Result;

pub struct Editing {
    mask: u32,
    threshold: f32,
    editing_threshold: f32,
    max_post_steps: usize,
    num_to_transfer: usize,
    prompt: usize,
    post: usize,
    /// The last forward saw no mask and edited nothing: the block is final.
    stable: bool,
}

impl Editing {
    pub fn new(p: &DecodeParams, ids: &SpecialIds) -> Self {
        Editing {
            mask: ids.mask,
            threshold: p.threshold,
            editing_threshold: p.editing_threshold,
            max_post_steps: p.max_post_steps,
            num_to_transfer: p.num_to_transfer,
            prompt: 0,
            post: 0,
            stable: false,
        }
    }
}

impl BlockPolicy for Editing {
    fn begin(&mut self, _block: &[u32], prompt: usize) -> Result<()> {
        self.prompt = prompt;
        self.post = 0;
        self.stable = false;
        Ok(())
    }

    fn wants_forward(&mut self, block: &[u32]) -> Result<bool> {
        if self.stable {
            return Ok(false);
        }
        if !block.contains(&self.mask) {
            self.post += 1;
        }
        Ok(self.post <= self.max_post_steps)
    }

    fn apply(&mut self, block: &mut [u32], samples: &[Sampled]) -> Result<Writes> {
        let masked: Vec<(usize, f32)> = (0..block.len())
            .filter(|&i| block[i] == self.mask)
            .map(|i| (i, samples[i].confidence))
            .collect();
        let filled = if masked.is_empty() {
            Vec::new()
        } else {
            schedule::select_commits(&masked, self.threshold, self.num_to_transfer)
        };
        let edited: Vec<usize> = (self.prompt..block.len())
            .filter(|&i| {
                block[i] != self.mask
                    && samples[i].confidence > self.editing_threshold
                    && samples[i].token != block[i]
            })
            .collect();
        self.stable = masked.is_empty() && edited.is_empty();
        for &i in filled.iter().chain(&edited) {
            block[i] = samples[i].token;
        }
        Ok(Writes {
            filled,
            edited,
            written: block.to_vec(),
            ..Writes::default()
        })
    }
}

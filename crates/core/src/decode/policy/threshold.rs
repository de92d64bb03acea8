//! LLaDA2.0 (SPEC §3): a step commits the masks above the threshold, or the schedule's count of
//! the most confident ones; a committed token is never changed again.

use super::{BlockPolicy, Writes};
use crate::backend::Sampled;
use crate::chat::SpecialIds;
use crate::decode::{schedule, DecodeParams};
use crate::error::Result;

pub struct Threshold {
    mask: u32,
    threshold: f32,
    schedule: Vec<usize>,
    step: usize,
}

impl Threshold {
    pub fn new(p: &DecodeParams, ids: &SpecialIds) -> Self {
        Threshold {
            mask: ids.mask,
            threshold: p.threshold,
            schedule: schedule::transfer_schedule(p.block_length, p.capped_steps()),
            step: 0,
        }
    }
}

impl BlockPolicy for Threshold {
    fn begin(&mut self, _block: &[u32], _prompt: usize) -> Result<()> {
        self.step = 0;
        Ok(())
    }

    fn wants_forward(&mut self, block: &[u32]) -> Result<bool> {
        Ok(self.step < self.schedule.len() && block.contains(&self.mask))
    }

    fn apply(&mut self, block: &mut [u32], samples: &[Sampled]) -> Result<Writes> {
        let cand: Vec<(usize, f32)> = (0..block.len())
            .filter(|&i| block[i] == self.mask)
            .map(|i| (i, samples[i].confidence))
            .collect();
        let filled = schedule::select_commits(&cand, self.threshold, self.schedule[self.step]);
        for &i in &filled {
            block[i] = samples[i].token;
        }
        self.step += 1;
        Ok(Writes {
            filled,
            written: block.to_vec(),
            ..Writes::default()
        })
    }
}

//! The block-diffusion decoder as a state machine: it hands out the next forward to run and takes
//! back that forward's samples. [`super::generate`] drives it in a loop over a synchronous
//! backend; a caller whose device answers asynchronously (WebGPU in the browser reads results
//! back through a promise) or that must stay responsive between steps (cancel in a Web Worker)
//! drives it one step at a time with the same arithmetic.

use super::{schedule, DecodeParams, Finish, Generation, StepEvent};
use crate::backend::{Capture, SampleParams, Step, StepOutput};
use crate::chat::SpecialIds;
use crate::error::{Error, Result};

pub struct Decoding {
    p: DecodeParams,
    ids: SpecialIds,
    plen: usize,
    /// Prompt plus masks, padded to whole blocks; committed tokens replace masks in place.
    x: Vec<u32>,
    schedule: Vec<usize>,
    block: usize,
    /// Index into `schedule` within the current block.
    substep: usize,
    forwards: usize,
    /// Positions the backend's KV cache holds (when the cache is used).
    cached: usize,
    /// Set once decoding has ended (early stop, eos in a finished block, or the last block).
    done: Option<Generation>,
    /// A step has been handed out and its samples are awaited.
    pending: bool,
}

impl Decoding {
    /// Checks the request; the caller must reset the backend's KV cache before the first step.
    pub fn new(
        ids: &SpecialIds,
        max_positions: usize,
        prompt: &[u32],
        p: &DecodeParams,
    ) -> Result<Self> {
        p.validate()?;
        let (b, plen) = (p.block_length, prompt.len());
        let total = (plen + p.gen_length).div_ceil(b) * b;
        if total > max_positions {
            return Err(Error::Invalid(format!(
                "prompt ({plen} tokens) + generation ({}) padded to whole blocks of {b} is {total} positions, \
                 beyond max_position_embeddings ({max_positions})",
                p.gen_length
            )));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t >= ids.valid_vocab) {
            return Err(Error::Invalid(format!(
                "prompt token id {bad} is outside the vocabulary ({} ids)",
                ids.valid_vocab
            )));
        }
        let mut x = prompt.to_vec();
        x.resize(total, ids.mask);
        Ok(Decoding {
            schedule: schedule::transfer_schedule(b, p.steps),
            block: plen / b,
            substep: 0,
            p: p.clone(),
            ids: *ids,
            plen,
            x,
            forwards: 0,
            cached: 0,
            done: None,
            pending: false,
        })
    }

    /// The next forward to run, or `None` once decoding has ended (then [`Self::result`]).
    pub fn next_step(&mut self) -> Option<Step<'_>> {
        let b = self.p.block_length;
        let total = self.x.len();
        loop {
            if self.done.is_some() {
                return None;
            }
            if self.block >= total / b {
                self.done = Some(self.final_generation());
                return None;
            }
            let (ws, we) = (self.block * b, self.block * b + b);
            let window_open =
                self.substep < self.schedule.len() && self.x[ws..we].contains(&self.ids.mask);
            if !window_open {
                // The block is finished: an eos anywhere in the generation so far ends decoding.
                if self.x[self.plen..we].contains(&self.ids.eos) {
                    self.done = Some(self.final_generation());
                    return None;
                }
                self.block += 1;
                self.substep = 0;
                continue;
            }
            let start = if self.p.use_cache { self.cached } else { 0 };
            self.pending = true;
            return Some(Step {
                tokens: &self.x[start..we],
                start,
                keep: if self.p.use_cache { ws - start } else { 0 },
                block_length: b,
                out_rows: b,
                sampling: SampleParams {
                    temperature: self.p.temperature,
                    top_k: self.p.top_k,
                    top_p: self.p.top_p,
                    seed: self.p.seed,
                    step: self.forwards as u32,
                    mask: self.ids.mask,
                    valid_vocab: self.ids.valid_vocab,
                },
                capture: Capture::Samples,
            });
        }
    }

    /// Applies the samples of the step last handed out by [`Self::next_step`]: commits tokens and
    /// says what changed. `backend` names the device in errors.
    pub fn apply(&mut self, out: &StepOutput, backend: &str) -> Result<StepEvent> {
        if !std::mem::take(&mut self.pending) {
            return Err(Error::Invalid(
                "decoder: samples applied without a step handed out".into(),
            ));
        }
        let b = self.p.block_length;
        let (ws, we) = (self.block * b, self.block * b + b);
        if self.p.use_cache {
            self.cached = ws;
        }
        if out.samples.len() != b {
            return Err(Error::backend(
                backend,
                format!("returned {} samples for a window of {b}", out.samples.len()),
            ));
        }
        let mask = self.ids.mask;
        let masked: Vec<usize> = (ws..we).filter(|&i| self.x[i] == mask).collect();
        let cand: Vec<(usize, f32)> = masked
            .iter()
            .map(|&i| (i, out.samples[i - ws].confidence))
            .collect();
        let chosen = schedule::select_commits(&cand, self.p.threshold, self.schedule[self.substep]);
        let window = self.x[ws..we].to_vec();
        let proposals = masked
            .iter()
            .map(|&i| (i, out.samples[i - ws].token, out.samples[i - ws].confidence))
            .collect();
        let committed: Vec<(usize, u32)> = chosen
            .iter()
            .map(|&i| (i, out.samples[i - ws].token))
            .collect();
        for &(i, t) in &committed {
            self.x[i] = t;
        }
        let event = StepEvent {
            forward: self.forwards,
            block_start: ws,
            window,
            committed,
            proposals,
            masked_after: (ws..we).filter(|&i| self.x[i] == mask).collect(),
        };
        self.forwards += 1;
        self.substep += 1;
        if self.p.eos_early_stop && event.committed.iter().any(|&(_, t)| t == self.ids.eos) {
            self.try_early_stop();
        }
        Ok(event)
    }

    /// The generation, once [`Self::next_step`] has returned `None`.
    pub fn result(&self) -> Option<&Generation> {
        self.done.as_ref()
    }

    pub fn into_result(self) -> Option<Generation> {
        self.done
    }

    /// Forwards run so far.
    pub fn forwards(&self) -> usize {
        self.forwards
    }

    pub fn prompt_len(&self) -> usize {
        self.plen
    }

    /// Ends decoding at the first eos of the generation if nothing before it is still masked.
    fn try_early_stop(&mut self) {
        let (plen, total) = (self.plen, self.x.len());
        if let Some(e) = (plen..total).find(|&i| self.x[i] == self.ids.eos) {
            if !self.x[plen..e].contains(&self.ids.mask) {
                let end = (e + 1).min(plen + self.p.gen_length);
                self.done = Some(Generation {
                    tokens: self.x[plen..end].to_vec(),
                    forwards: self.forwards,
                    finish: Finish::Eos,
                });
            }
        }
    }

    fn final_generation(&self) -> Generation {
        let mut tokens = self.x[self.plen..self.plen + self.p.gen_length].to_vec();
        let finish = match tokens.iter().position(|&t| t == self.ids.eos) {
            Some(e) => {
                tokens.truncate(e + 1);
                Finish::Eos
            }
            None => Finish::Length,
        };
        Generation {
            tokens,
            forwards: self.forwards,
            finish,
        }
    }
}

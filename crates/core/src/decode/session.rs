//! The block-diffusion decoder as a state machine: it hands out the next forward to run and takes
//! back that forward's samples. [`super::generate`] drives it in a loop over a synchronous
//! backend; a caller whose device answers asynchronously (WebGPU in the browser reads results
//! back through a promise) or that must stay responsive between steps (cancel in a Web Worker)
//! drives it one step at a time with the same arithmetic.
//!
//! The loop over blocks, the KV cache and the events are the same for every generation of
//! LLaDA2; what a forward writes into its block and when the block ends is the family's
//! [`BlockPolicy`].
//!
//! KV cache: every step keeps the K/V of all its positions. The K/V of a finished block are final
//! when its last forward was fed its final tokens (a 2.1 block that ends because nothing changed);
//! otherwise (the last forward filled or edited tokens) the next block's first step starts at the
//! finished block and recomputes it with the new window (2B positions), so a generation makes
//! exactly the reference's number of forwards.

use super::family::Decoder;
use super::policy::{self, BlockPolicy, Writes};
use super::{DecodeParams, Finish, Generation, StepEvent};
use crate::backend::{Capture, SampleParams, Step, StepOutput};
use crate::chat::SpecialIds;
use crate::error::{Error, Result};

pub struct Decoding {
    p: DecodeParams,
    ids: SpecialIds,
    plen: usize,
    /// Prompt plus masks, padded to whole blocks; decoded tokens replace masks in place.
    x: Vec<u32>,
    policy: Box<dyn BlockPolicy>,
    block: usize,
    /// The current block has been entered (`policy.begin`).
    entered: bool,
    /// The block as fed to its last forward (to tell whether its cached K/V are final).
    fed: Vec<u32>,
    forwards: usize,
    /// Positions before this have final K/V in the backend's cache (when the cache is used).
    clean: usize,
    /// Set once decoding has ended (early stop, eos in a finished block, or the last block).
    done: Option<Generation>,
    /// A step has been handed out and its samples are awaited.
    pending: bool,
    /// Tokens that became final since the last event (a block that ended).
    settled: Vec<(usize, u32)>,
    /// The current block was checked and needs a forward (the check has side effects).
    ready: bool,
    /// The error that ended decoding (LLaDA2.2's non-converging block).
    failed: Option<Error>,
    /// Prompt positions per prefill forward before the first decoding forward (0: the prompt
    /// goes in with the first window), and where the chunk handed out ends.
    prefill_chunk: usize,
    prefill_to: Option<usize>,
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
        let max_positions = max_positions.min(super::MAX_CONTEXT);
        if total > max_positions {
            return Err(Error::Invalid(format!(
                "prompt ({plen} tokens) + generation ({}) padded to whole blocks of {b} is {total} positions, \
                 beyond the context limit of {max_positions} positions (max_position_embeddings, capped by memory and --max-context)",
                p.gen_length
            )));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t >= ids.valid_vocab) {
            return Err(Error::Invalid(format!(
                "prompt token id {bad} is outside the vocabulary ({} ids)",
                ids.valid_vocab
            )));
        }
        if p.decoder == Decoder::Llada22 {
            check_llada22(ids, prompt, p)?;
        } else if let Some(r) = ids.routing_block {
            // The forward of a block-routed model needs whole routing blocks whatever decodes it.
            if !b.is_multiple_of(r as usize) {
                return Err(block_multiple(b, r));
            }
        }
        let mut x = prompt.to_vec();
        x.resize(total, ids.mask);
        Ok(Decoding {
            policy: policy::for_params(p, ids),
            block: plen / b,
            entered: false,
            fed: Vec::new(),
            p: p.clone(),
            ids: *ids,
            plen,
            x,
            forwards: 0,
            clean: 0,
            done: None,
            pending: false,
            settled: Vec::new(),
            ready: false,
            failed: None,
            prefill_chunk: 0,
            prefill_to: None,
        })
    }

    pub fn decoder(&self) -> Decoder {
        self.p.decoder
    }

    pub fn block_length(&self) -> usize {
        self.p.block_length
    }

    /// Takes the K/V of the first `positions` prompt positions as already in the backend's
    /// cache (prefix.rs says when they are): the first forward starts after them. Whole blocks
    /// of the prompt only, before any forward, and only with the cache in use.
    pub fn start_cached(&mut self, positions: usize) -> Result<()> {
        let b = self.p.block_length;
        if !self.p.use_cache
            || self.forwards > 0
            || self.pending
            || !positions.is_multiple_of(b)
            || positions > self.plen / b * b
        {
            return Err(Error::Invalid(format!(
                "decoder: {positions} cached positions cannot start a prompt of {} in blocks of {b}",
                self.plen
            )));
        }
        self.clean = positions;
        Ok(())
    }

    /// Writes the prompt's K/V `positions` at a time (rounded up to whole blocks) before the
    /// first decoding forward: [`Self::next_step`] hands out those chunks first, each ending
    /// on a multiple of the chunk, each applied with [`Self::apply_prefill`]. A batch then runs
    /// a long prompt's prefill over several forwards beside the others' windows instead of
    /// stalling them for one long forward. The tokens are the same (block-causal attention
    /// over whole blocks does not see where forwards were cut; whole blocks are whole routing
    /// blocks, `Decoding::new` checks). Only with the cache in use, before any forward; the
    /// last chunk that would reach the first window goes in with it.
    pub fn chunk_prefill(&mut self, positions: usize) -> Result<()> {
        if !self.p.use_cache || self.forwards > 0 || self.pending {
            return Err(Error::Invalid(
                "decoder: the prefill can be chunked only with the cache, before any forward"
                    .into(),
            ));
        }
        // No chunk is longer than a context can be (a flag's usize::MAX must not overflow).
        let b = self.p.block_length;
        self.prefill_chunk = positions.min(super::MAX_CONTEXT).div_ceil(b) * b;
        Ok(())
    }

    /// Whether the step handed out last is a prefill chunk (apply it with
    /// [`Self::apply_prefill`]).
    pub fn pending_prefill(&self) -> bool {
        self.pending && self.prefill_to.is_some()
    }

    /// Takes the output of a prefill chunk: its positions' K/V are now final in the cache.
    pub fn apply_prefill(&mut self, out: &StepOutput, backend: &str) -> Result<()> {
        let Some(to) = self.prefill_to.filter(|_| self.pending) else {
            return Err(Error::Invalid(
                "decoder: a prefill output applied without a prefill chunk handed out".into(),
            ));
        };
        if out.samples.len() != 1 {
            return Err(Error::backend(
                backend,
                format!(
                    "returned {} samples for a prefill chunk (1 expected)",
                    out.samples.len()
                ),
            ));
        }
        self.pending = false;
        self.prefill_to = None;
        self.clean = to;
        Ok(())
    }

    /// The tokens whose K/V in the backend's cache are final (none without the cache).
    pub fn final_prefix(&self) -> &[u32] {
        if self.p.use_cache {
            &self.x[..self.clean]
        } else {
            &[]
        }
    }

    /// The next forward to run, or `None` once decoding has ended (then [`Self::result`]).
    /// An error (LLaDA2.2's block that does not converge) ends decoding too.
    pub fn next_step(&mut self) -> Option<Step<'_>> {
        if !self.ready {
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = Some(e);
                    return None;
                }
            }
        }
        let b = self.p.block_length;
        let (ws, we) = (self.block * b, self.block * b + b);
        let sampling = self.sampling();
        if self.prefill_chunk > 0 && self.forwards == 0 {
            let to = (self.clean / self.prefill_chunk + 1) * self.prefill_chunk;
            if to < ws {
                self.pending = true;
                self.prefill_to = Some(to);
                return Some(Step {
                    tokens: &self.x[self.clean..to],
                    start: self.clean,
                    keep: to - self.clean,
                    block_length: b,
                    // The backends predict at least one row; the decoder ignores it.
                    out_rows: 1,
                    sampling,
                    capture: Capture::Samples,
                });
            }
        }
        let start = if self.p.use_cache { self.clean } else { 0 };
        self.pending = true;
        // Reuses the buffer: no allocation per step.
        self.fed.clear();
        self.fed.extend_from_slice(&self.x[ws..we]);
        Some(Step {
            tokens: &self.x[start..we],
            start,
            keep: if self.p.use_cache { we - start } else { 0 },
            block_length: b,
            out_rows: b,
            sampling,
            capture: Capture::Samples,
        })
    }

    /// The sampling parameters of the next decoding forward.
    fn sampling(&self) -> SampleParams {
        SampleParams {
            temperature: self.p.temperature,
            top_k: self.p.top_k,
            top_p: self.p.top_p,
            seed: self.p.seed,
            step: self.forwards as u32,
            mask: self.ids.mask,
            valid_vocab: self.ids.valid_vocab,
        }
    }

    /// Moves through finished blocks until one needs a forward (`true`) or decoding ends.
    fn advance(&mut self) -> Result<bool> {
        let b = self.p.block_length;
        let total = self.x.len();
        loop {
            if self.done.is_some() || self.failed.is_some() {
                return Ok(false);
            }
            if self.block >= total / b {
                self.done = Some(self.final_generation()?);
                return Ok(false);
            }
            let (ws, we) = (self.block * b, self.block * b + b);
            if !self.entered {
                let prompt = self.plen.saturating_sub(ws).min(b);
                self.policy.begin(&self.x[ws..we], prompt)?;
                self.entered = true;
                self.fed.clear();
            }
            if self.policy.wants_forward(&self.x[ws..we])? {
                self.ready = true;
                return Ok(true);
            }
            // The block is finished: its tokens are final.
            self.settled
                .extend((ws.max(self.plen)..we).map(|i| (i, self.x[i])));
            if self.fed == self.x[ws..we] {
                self.clean = we;
            }
            if self.stops_after_block(we) {
                self.done = Some(self.final_generation()?);
                return Ok(false);
            }
            self.block += 1;
            self.entered = false;
        }
    }

    /// Whether an eos in the finished generation so far ends decoding after this block.
    fn stops_after_block(&self, we: usize) -> bool {
        let stop_after_block = match self.p.decoder {
            // The official 2.0 generate always stops after the block with an eos.
            Decoder::Llada20 => true,
            _ => self.p.eos_early_stop.unwrap_or(true),
        };
        let end = we.min(self.plen + self.p.gen_length);
        stop_after_block && self.x[self.plen..end].iter().any(|&t| self.is_eos(t))
    }

    fn is_eos(&self, t: u32) -> bool {
        t == self.ids.eos || (self.p.decoder == Decoder::Llada22 && Some(t) == self.ids.eos_alt)
    }

    /// Applies the samples of the step last handed out by [`Self::next_step`]: writes tokens and
    /// says what changed. `backend` names the device in errors.
    pub fn apply(&mut self, out: &StepOutput, backend: &str) -> Result<StepEvent> {
        if self.pending_prefill() {
            return Err(Error::Invalid(
                "decoder: a prefill chunk's output goes to apply_prefill".into(),
            ));
        }
        if !std::mem::take(&mut self.pending) {
            return Err(Error::Invalid(
                "decoder: samples applied without a step handed out".into(),
            ));
        }
        self.ready = false;
        let b = self.p.block_length;
        let (ws, we) = (self.block * b, self.block * b + b);
        if out.samples.len() != b {
            return Err(Error::backend(
                backend,
                format!("returned {} samples for a window of {b}", out.samples.len()),
            ));
        }
        if let Some(r) = out.samples.iter().position(|s| !s.confidence.is_finite()) {
            return Err(Error::NonFinite {
                forward: self.forwards,
                culprit: format!(" in the prediction for position {}", ws + r),
            });
        }
        if self.p.use_cache {
            // The positions before the window were fed their final tokens by this step.
            self.clean = self.clean.max(ws);
        }
        let mask = self.ids.mask;
        let window = self.x[ws..we].to_vec();
        let proposals = (ws..we)
            .filter(|&i| self.x[i] == mask)
            .map(|i| (i, out.samples[i - ws].token, out.samples[i - ws].confidence))
            .collect();
        let w: Writes = self.policy.apply(&mut self.x[ws..we], &out.samples)?;
        let at = |list: &[usize]| -> Vec<(usize, u32)> {
            list.iter().map(|&i| (ws + i, w.written[i])).collect()
        };
        let committed = at(&w.filled);
        let mut event = StepEvent {
            forward: self.forwards,
            block_start: ws,
            window,
            edited: at(&w.edited),
            deleted: w.deleted.iter().map(|&i| ws + i).collect(),
            split: w.split.iter().map(|&i| ws + i).collect(),
            escapes: w.escapes,
            final_round: w.final_round,
            masked_after: (ws..we).filter(|&i| self.x[i] == mask).collect(),
            window_after: self.x[ws..we].to_vec(),
            proposals,
            settled: Vec::new(),
            committed,
        };
        self.forwards += 1;
        if self.p.decoder == Decoder::Llada20
            && self.p.eos_early_stop == Some(true)
            && event.committed.iter().any(|&(_, t)| t == self.ids.eos)
        {
            self.try_early_stop();
        }
        // Find the next forward now, so that a block this step finished is reported with it.
        if let Err(e) = self.advance() {
            self.failed = Some(e);
        }
        let settled = std::mem::take(&mut self.settled);
        event.settled = if self.p.decoder.edits() {
            settled
        } else {
            // Committed 2.0 tokens never change again.
            event.committed.clone()
        };
        Ok(event)
    }

    /// The generation, once [`Self::next_step`] has returned `None`.
    pub fn result(&self) -> Option<&Generation> {
        self.done.as_ref()
    }

    /// The generation, or the error that ended decoding.
    pub fn into_result(self) -> Result<Generation> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.done
            .ok_or_else(|| Error::Invalid("decoder ended without a result".into()))
    }

    /// The error that ended decoding, if one did.
    pub fn error(&self) -> Option<&Error> {
        self.failed.as_ref()
    }

    pub fn take_error(&mut self) -> Option<Error> {
        self.failed.take()
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
                    decoder: self.p.decoder,
                });
            }
        }
    }

    fn final_generation(&self) -> Result<Generation> {
        let mut tokens = self.x[self.plen..self.plen + self.p.gen_length].to_vec();
        let finish = match tokens.iter().position(|&t| self.is_eos(t)) {
            Some(e) => {
                tokens.truncate(e + 1);
                Finish::Eos
            }
            None => Finish::Length,
        };
        let unresolved = |t: &u32| {
            *t == self.ids.mask || Some(*t) == self.ids.delete || Some(*t) == self.ids.split
        };
        if self.p.decoder == Decoder::Llada22 && tokens.iter().any(unresolved) {
            return Err(Error::Invalid(
                "decoding left unresolved diffusion tokens (mask, DELETE or SPLIT)".into(),
            ));
        }
        Ok(Generation {
            tokens,
            forwards: self.forwards,
            finish,
            decoder: self.p.decoder,
        })
    }
}

/// LLaDA2.2's requirements on a request: edit tokens known, a non-empty prompt without masks or
/// edit tokens, blocks made of whole routing blocks.
fn check_llada22(ids: &SpecialIds, prompt: &[u32], p: &DecodeParams) -> Result<()> {
    if ids.delete.is_none() || ids.split.is_none() {
        return Err(Error::Invalid(
            "the llada2.2 decoder needs delete_token_id and split_token_id in config.json".into(),
        ));
    }
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the llada2.2 decoder needs a non-empty prompt".into(),
        ));
    }
    let special = [Some(ids.mask), ids.delete, ids.split];
    if let Some(t) = prompt.iter().find(|t| special.contains(&Some(**t))) {
        return Err(Error::Invalid(format!(
            "the prompt holds token {t} (mask, DELETE or SPLIT), which the llada2.2 decoder rejects"
        )));
    }
    if let Some(r) = ids.routing_block {
        if !p.block_length.is_multiple_of(r as usize) {
            return Err(block_multiple(p.block_length, r));
        }
    }
    Ok(())
}

fn block_multiple(b: usize, r: u32) -> Error {
    Error::Invalid(format!(
        "block_length {b} must be a multiple of the model's routing block (block_size {r})"
    ))
}

//! Block-diffusion decoding (SPEC §3) over any `Backend`, with a KV cache of finished blocks.
//!
//! Each finished block's commit is folded into the first step of the next block: that step runs
//! over the finished block plus the new window (2B positions) and keeps the finished block in the
//! cache, so a block costs exactly as many forwards as the reference (which has no cache).

pub mod defaults;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod stream;

use crate::backend::{Backend, Capture, SampleParams, Step};
use crate::chat::SpecialIds;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Decoding parameters. Defaults are LLaDA2's: block 32, steps 32, threshold 0.95, greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecodeParams {
    pub gen_length: usize,
    pub block_length: usize,
    pub steps: usize,
    pub threshold: f32,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub eos_early_stop: bool,
    /// Off only to measure the cost of recomputing the whole prefix every step.
    pub use_cache: bool,
}

impl Default for DecodeParams {
    fn default() -> Self {
        DecodeParams {
            gen_length: 128,
            block_length: 32,
            steps: 32,
            threshold: 0.95,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos_early_stop: false,
            use_cache: true,
        }
    }
}

impl DecodeParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(m.to_string()));
        if self.block_length == 0 {
            return bad("block_length must be at least 1");
        }
        if self.steps == 0 {
            return bad("steps must be at least 1");
        }
        if self.gen_length == 0 {
            return bad("gen_length must be at least 1");
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return bad("threshold must be in (0, 1]");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        Ok(())
    }
}

/// What one step did, for streaming consumers.
#[derive(Debug, Clone, Serialize)]
pub struct StepEvent {
    /// Forward number, from 0.
    pub forward: usize,
    /// Absolute position of the window's first token.
    pub block_start: usize,
    /// The window as fed to this forward (mask id where still masked).
    pub window: Vec<u32>,
    /// (absolute position, token) committed by this step.
    pub committed: Vec<(usize, u32)>,
    /// Provisional (position, token, confidence) of every position still masked before this step.
    pub proposals: Vec<(usize, u32, f32)>,
    /// Positions still masked after this step, in the window.
    pub masked_after: Vec<usize>,
}

/// Why decoding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Generated ids after the prompt, cut after the first eos (eos included).
    pub tokens: Vec<u32>,
    pub forwards: usize,
    pub finish: Finish,
}

/// Whether the consumer wants decoding to go on.
pub type Keep = bool;

pub fn generate(
    backend: &mut dyn Backend,
    ids: &SpecialIds,
    max_positions: usize,
    prompt: &[u32],
    p: &DecodeParams,
    on_step: &mut dyn FnMut(&StepEvent) -> Keep,
) -> Result<Generation> {
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
    let schedule = schedule::transfer_schedule(b, p.steps);
    backend.reset();
    let mut forwards = 0usize;
    let mut cached = 0usize;

    for block in plen / b..total / b {
        let (ws, we) = (block * b, block * b + b);
        for &n_commit in &schedule {
            let masked: Vec<usize> = (ws..we).filter(|&i| x[i] == ids.mask).collect();
            if masked.is_empty() {
                break;
            }
            let start = if p.use_cache { cached } else { 0 };
            let sampling = SampleParams {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                seed: p.seed,
                step: forwards as u32,
                mask: ids.mask,
                valid_vocab: ids.valid_vocab,
            };
            let out = backend.step(&Step {
                tokens: &x[start..we],
                start,
                keep: if p.use_cache { ws - start } else { 0 },
                block_length: b,
                out_rows: b,
                sampling,
                capture: Capture::Samples,
            })?;
            if p.use_cache {
                cached = ws;
            }
            if out.samples.len() != b {
                return Err(Error::backend(
                    backend.name(),
                    format!("returned {} samples for a window of {b}", out.samples.len()),
                ));
            }
            let cand: Vec<(usize, f32)> = masked
                .iter()
                .map(|&i| (i, out.samples[i - ws].confidence))
                .collect();
            let chosen = schedule::select_commits(&cand, p.threshold, n_commit);
            let window = x[ws..we].to_vec();
            let proposals = masked
                .iter()
                .map(|&i| (i, out.samples[i - ws].token, out.samples[i - ws].confidence))
                .collect();
            let committed: Vec<(usize, u32)> = chosen
                .iter()
                .map(|&i| (i, out.samples[i - ws].token))
                .collect();
            for &(i, t) in &committed {
                x[i] = t;
            }
            let event = StepEvent {
                forward: forwards,
                block_start: ws,
                window,
                committed,
                proposals,
                masked_after: (ws..we).filter(|&i| x[i] == ids.mask).collect(),
            };
            forwards += 1;
            if !on_step(&event) {
                return Err(Error::Cancelled);
            }
            if p.eos_early_stop && event.committed.iter().any(|&(_, t)| t == ids.eos) {
                if let Some(e) = (plen..total).find(|&i| x[i] == ids.eos) {
                    if !x[plen..e].contains(&ids.mask) {
                        let end = (e + 1).min(plen + p.gen_length);
                        return Ok(Generation {
                            tokens: x[plen..end].to_vec(),
                            forwards,
                            finish: Finish::Eos,
                        });
                    }
                }
            }
        }
        if x[plen..we].contains(&ids.eos) {
            break;
        }
    }
    let mut tokens = x[plen..plen + p.gen_length].to_vec();
    let finish = match tokens.iter().position(|&t| t == ids.eos) {
        Some(e) => {
            tokens.truncate(e + 1);
            Finish::Eos
        }
        None => Finish::Length,
    };
    Ok(Generation {
        tokens,
        forwards,
        finish,
    })
}

//! Block-diffusion decoding (SPEC §3) over any `Backend`, with a KV cache of finished blocks.
//!
//! Each finished block's commit is folded into the first step of the next block: that step runs
//! over the finished block plus the new window (2B positions) and keeps the finished block in the
//! cache, so a block costs exactly as many forwards as the reference (which has no cache).

pub mod defaults;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod session;
pub mod stream;

use crate::backend::Backend;
use crate::chat::SpecialIds;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
pub use session::Decoding;

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
    let mut decoding = Decoding::new(ids, max_positions, prompt, p)?;
    backend.reset();
    let name = backend.name();
    while let Some(step) = decoding.next_step() {
        let out = backend.step(&step)?;
        let event = decoding.apply(&out, &name)?;
        if !on_step(&event) {
            return Err(Error::Cancelled);
        }
    }
    decoding
        .into_result()
        .ok_or_else(|| Error::Invalid("decoder ended without a result".into()))
}

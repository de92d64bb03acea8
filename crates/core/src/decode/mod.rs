//! Block-diffusion decoding (SPEC §3) over any `Backend`, with a KV cache of finished blocks.
//!
//! Each finished block's commit is folded into the first step of the next block: that step runs
//! over the finished block plus the new window (2B positions) and keeps the finished block in the
//! cache, so a block costs exactly as many forwards as the reference (which has no cache).

pub mod batch;
pub mod defaults;
pub mod family;
pub mod overrides;
pub mod policy;
pub mod prefix;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod session;
pub mod slots;
pub mod stream;

use crate::backend::Backend;
use crate::chat::SpecialIds;
use crate::error::{Error, Result};
pub use batch::{generate_batch, BatchRequest, BatchRun};
pub use family::Decoder;
pub use prefix::{generate_reusing, KvPrefix};
use serde::{Deserialize, Serialize};
pub use session::Decoding;
pub use slots::SlotPool;

/// Largest `steps`, `max_post_steps` and `max_steps_per_block` accepted: each is a count of
/// forwards, and the schedule is allocated from `steps`.
pub const MAX_STEPS: usize = 1 << 16;

/// Most positions (prompt + generation) any request may use, whatever the config says
/// (LLaDA2.2: 131072): bounds the decoder's own buffers before anything is allocated.
pub const MAX_CONTEXT: usize = 1 << 20;

/// Decoding parameters. `DecodeParams::default()` is LLaDA2.0's (block 32, steps 32, threshold
/// 0.95, greedy); [`DecodeParams::for_decoder`] gives each family's official defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecodeParams {
    pub decoder: Decoder,
    pub gen_length: usize,
    pub block_length: usize,
    /// 2.0 and 2.2; capped to `gen_length / minimal_topk` in 2.0 (not in 2.2; unused by 2.1).
    pub steps: usize,
    /// 2.0's step cap divisor (the official `minimal_topk`).
    pub minimal_topk: usize,
    pub threshold: f32,
    /// 2.1/2.2: a written token is replaced where another is predicted with more confidence.
    pub editing_threshold: f32,
    /// 2.1/2.2: forwards a block may take once no mask is left.
    pub max_post_steps: usize,
    /// 2.1: masks filled per forward when none is above the threshold.
    pub num_to_transfer: usize,
    /// 2.2: forwards per block before decoding fails as not converging.
    pub max_steps_per_block: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    /// `Some(true)`: the official `eos_early_stop=True`; `Some(false)`: the official default
    /// (2.0 still stops after the block with the first eos, 2.1/2.2 decode every block);
    /// `None`: stop after the block that holds the first eos (the same tokens with the fewest
    /// forwards that the official default's output needs).
    pub eos_early_stop: Option<bool>,
    /// Off only to measure the cost of recomputing the whole prefix every step.
    pub use_cache: bool,
}

impl Default for DecodeParams {
    fn default() -> Self {
        DecodeParams::for_decoder(Decoder::Llada20)
    }
}

impl DecodeParams {
    /// The official defaults of a family.
    pub fn for_decoder(decoder: Decoder) -> Self {
        let base = DecodeParams {
            decoder,
            gen_length: 128,
            block_length: 32,
            steps: 32,
            minimal_topk: 1,
            threshold: 0.95,
            editing_threshold: 0.9,
            max_post_steps: 16,
            num_to_transfer: 1,
            max_steps_per_block: 1000,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos_early_stop: None,
            use_cache: true,
        };
        match decoder {
            Decoder::Llada20 | Decoder::Llada21 => base,
            Decoder::Llada22 => DecodeParams {
                threshold: 0.5,
                editing_threshold: 0.0,
                ..base
            },
        }
    }

    /// 2.0's official step cap: `min(steps, gen_length // minimal_topk)`, at least one.
    pub fn capped_steps(&self) -> usize {
        self.steps
            .min(self.gen_length / self.minimal_topk.max(1))
            .max(1)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.block_length == 0 {
            return bad("block_length must be at least 1".into());
        }
        if self.steps == 0 && self.decoder != Decoder::Llada22 {
            return bad("steps must be at least 1".into());
        }
        for (name, v) in [
            ("steps", self.steps),
            ("max_post_steps", self.max_post_steps),
            ("max_steps_per_block", self.max_steps_per_block),
        ] {
            if v > MAX_STEPS {
                return bad(format!("{name} ({v}) is larger than {MAX_STEPS}"));
            }
        }
        if self.gen_length == 0 || self.gen_length > MAX_CONTEXT {
            return bad(format!(
                "gen_length must be in 1..={MAX_CONTEXT}, got {}",
                self.gen_length
            ));
        }
        if self.block_length > MAX_CONTEXT {
            return bad(format!(
                "block_length ({}) is larger than {MAX_CONTEXT}",
                self.block_length
            ));
        }
        if self.minimal_topk == 0 {
            return bad("minimal_topk must be at least 1".into());
        }
        if self.num_to_transfer == 0 {
            return bad("num_to_transfer must be at least 1".into());
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return bad("threshold must be in (0, 1]".into());
        }
        if !(self.editing_threshold.is_finite() && self.editing_threshold >= 0.0) {
            return bad("editing_threshold must be a finite number >= 0 (>= 1 never edits)".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be a finite number >= 0".into());
        }
        if self.decoder == Decoder::Llada22 && self.temperature > 0.0 {
            return bad("the llada2.2 decoder is greedy only (temperature 0)".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]".into());
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
    /// (absolute position, token) committed by this step: masks given a token.
    pub committed: Vec<(usize, u32)>,
    /// Provisional (position, token, confidence) of every position still masked before this step.
    pub proposals: Vec<(usize, u32, f32)>,
    /// Positions still masked after this step, in the window.
    pub masked_after: Vec<usize>,
    /// 2.1/2.2: (absolute position, new token) of written tokens this step replaced (DELETE and
    /// SPLIT included; positions are those of `window`).
    pub edited: Vec<(usize, u32)>,
    /// 2.2: positions of `window` where this step wrote DELETE (the position goes) or SPLIT (a
    /// mask is inserted before it).
    pub deleted: Vec<usize>,
    pub split: Vec<usize>,
    /// 2.2: anti-loop re-picks, and whether this step was the block's final round.
    pub escapes: usize,
    pub final_round: bool,
    /// The window after this step (after DELETE/SPLIT moved tokens).
    pub window_after: Vec<u32>,
    /// (absolute position, token) that became final with this step: the committed tokens under
    /// 2.0, a whole block once it ends under the editing decoders.
    pub settled: Vec<(usize, u32)>,
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
    pub decoder: Decoder,
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
    // Nothing cached to start from: the backend is reset, every position computed.
    let mut none = KvPrefix::default();
    generate_reusing(backend, &mut none, ids, max_positions, prompt, p, on_step)
}

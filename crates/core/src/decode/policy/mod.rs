//! What differs between the generations of LLaDA2: which positions of a block a forward writes,
//! and when the block is finished. The block loop, the KV cache, sampling and events are shared
//! (`decode::session`); a policy sees only the block's tokens and each forward's samples.

mod editing;
mod levenshtein;
mod threshold;

pub use editing::Editing;
pub use levenshtein::Levenshtein;
pub use threshold::Threshold;

use super::family::Decoder;
use super::DecodeParams;
use crate::backend::Sampled;
use crate::chat::SpecialIds;
use crate::error::Result;

/// What one forward wrote into its block (indices into the block, ascending).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    /// Masks given a token (mask to token).
    pub filled: Vec<usize>,
    /// Written tokens replaced (token to token), DELETE and SPLIT included.
    pub edited: Vec<usize>,
    /// Positions holding DELETE / SPLIT in the written state (before the edit scan).
    pub deleted: Vec<usize>,
    pub split: Vec<usize>,
    /// The written state of the block, before DELETE/SPLIT were applied.
    pub written: Vec<u32>,
    /// LLaDA2.2's anti-loop re-picks.
    pub escapes: usize,
    /// LLaDA2.2's final round (no DELETE/SPLIT, every mask filled).
    pub final_round: bool,
}

/// One family's rule for a block.
pub trait BlockPolicy: Send {
    /// A new block: `block` holds its tokens, the first `prompt` of them prompt tokens (the
    /// first decoded block may start inside the prompt).
    fn begin(&mut self, block: &[u32], prompt: usize) -> Result<()>;
    /// Before each forward: whether the block needs one; `false` once it is finished.
    fn wants_forward(&mut self, block: &[u32]) -> Result<bool>;
    /// A forward's samples, one per block position: writes into `block` (which may shift under
    /// DELETE and SPLIT) and says what was written.
    fn apply(&mut self, block: &mut [u32], samples: &[Sampled]) -> Result<Writes>;
}

/// The policy of `p.decoder` for blocks of `p.block_length`.
pub fn for_params(p: &DecodeParams, ids: &SpecialIds) -> Box<dyn BlockPolicy> {
    match p.decoder {
        Decoder::Llada20 => Box::new(Threshold::new(p, ids)),
        Decoder::Llada21 => Box::new(Editing::new(p, ids)),
        Decoder::Llada22 => Box::new(Levenshtein::new(p, ids)),
    }
}

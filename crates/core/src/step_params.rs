//! The per-pass scalars every device kernel reads, in one layout for both GPU backends: WGSL's
//! `StepParams` (crates/wgpu/shaders/step.wgsl) has these fields in this order and CUDA's `P_*`
//! words (crates/cuda/kernels/common.cuh) index them; a test on each side checks its copy
//! against [`FIELDS`]. A pass is one dispatch of the graph over chunks of one or more steps
//! (passes.rs). WGSL reads one `StepParams` per pass and a [`SeqParams`] per sequence; CUDA
//! gives each sequence of a pass its own `StepParams` words (its per-sequence launches read them).

use crate::backend::Step;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Absolute position of the pass's first token.
    pub start: u32,
    /// Block length of the block-causal attention mask.
    pub block: u32,
    /// Tokens in this pass, at positions start .. start + n.
    pub n: u32,
    /// Rows whose predictions are wanted: the pass's last `out_rows` tokens.
    pub out_rows: u32,
    /// Where this pass's token ids start in the step's ids.
    pub ids_offset: u32,
    /// Position of the step's first predicted row (the sampler's RNG counter).
    pub first_out_pos: u32,
    /// The decoder's step counter and the seed's two halves: the counter-based RNG key.
    pub rng_step: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    /// Sampling temperature (0 = greedy) and its f32 reciprocal, which the host sampler
    /// multiplies by too.
    pub temperature: f32,
    pub inv_temp: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// Never sampled: the mask id and every id >= valid_vocab.
    pub mask_id: u32,
    pub valid_vocab: u32,
    /// Sequences in this pass: the entries of its [`SeqParams`] table (wgpu).
    pub seqs: u32,
}

/// The field names in memory order, one u32 word each.
pub const FIELDS: [&str; 16] = [
    "start",
    "block",
    "n",
    "out_rows",
    "ids_offset",
    "first_out_pos",
    "rng_step",
    "seed_lo",
    "seed_hi",
    "temperature",
    "inv_temp",
    "top_k",
    "top_p",
    "mask_id",
    "valid_vocab",
    "seqs",
];

pub const BYTES: usize = 64;
const _: () = assert!(std::mem::size_of::<StepParams>() == BYTES && FIELDS.len() * 4 == BYTES);

impl StepParams {
    /// The parameters of the pass over `len` tokens of `s` from `offset`, predicting its last
    /// `out` rows (a whole step: `offset` 0, `len` = tokens, `out` = the step's out_rows).
    pub fn pass(s: &Step, offset: usize, len: usize, out: usize) -> Self {
        let p = &s.sampling;
        StepParams {
            start: (s.start + offset) as u32,
            block: s.block_length as u32,
            n: len as u32,
            out_rows: out as u32,
            ids_offset: offset as u32,
            first_out_pos: (s.start + s.tokens.len() - s.out_rows) as u32,
            rng_step: p.step,
            seed_lo: p.seed as u32,
            seed_hi: (p.seed >> 32) as u32,
            temperature: p.temperature,
            inv_temp: if p.temperature > 0.0 {
                1.0 / p.temperature
            } else {
                0.0
            },
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            mask_id: p.mask,
            valid_vocab: p.valid_vocab,
            seqs: 1,
        }
    }

    pub fn words(&self) -> [u32; 16] {
        bytemuck::cast(*self)
    }

    /// The word index of a field (for the backends' layout checks).
    pub fn index_of(field: &str) -> Option<usize> {
        FIELDS.iter().position(|&f| f == field)
    }
}

/// Most sequences one pass holds (the length of the WGSL `seqs` table).
pub const MAX_PASS_SEQS: usize = 16;

/// One sequence's part of a pass: where its rows lie among the pass's rows and everything that
/// differs per sequence (positions, mask, KV-cache slot, sampling). The per-row kernels of a
/// batched pass look a row's sequence up here; WGSL's `Seq` (step.wgsl) mirrors it field for
/// field ([`SEQ_FIELDS`], checked by a test).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SeqParams {
    /// Absolute position of the sequence's first row in this pass.
    pub start: u32,
    /// Block length of its attention mask.
    pub block: u32,
    /// Its rows of the pass: `row0 .. row0 + rows`, predicting its last `out_rows`, which are
    /// the pass's predicted rows `out0 .. out0 + out_rows`.
    pub row0: u32,
    pub rows: u32,
    pub out0: u32,
    pub out_rows: u32,
    /// Where its KV-cache slot starts in the layer's cache, in positions.
    pub kv_base: u32,
    pub rng_step: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub temperature: f32,
    pub inv_temp: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub mask_id: u32,
    pub valid_vocab: u32,
}

pub const SEQ_FIELDS: [&str; 16] = [
    "start",
    "block",
    "row0",
    "rows",
    "out0",
    "out_rows",
    "kv_base",
    "rng_step",
    "seed_lo",
    "seed_hi",
    "temperature",
    "inv_temp",
    "top_k",
    "top_p",
    "mask_id",
    "valid_vocab",
];

pub const SEQ_BYTES: usize = 64;
const _: () = assert!(std::mem::size_of::<SeqParams>() == SEQ_BYTES);

impl SeqParams {
    /// Chunk `c` of step `s` placed at pass rows `row0..` and predicted rows `out0..`, its
    /// KV cache `kv_base` positions into the layer's cache.
    pub fn of(
        s: &Step,
        c: &crate::chunks::Chunk,
        row0: usize,
        out0: usize,
        kv_base: usize,
    ) -> Self {
        let u = StepParams::pass(s, c.offset, c.len, c.out);
        SeqParams {
            start: u.start,
            block: u.block,
            row0: row0 as u32,
            rows: c.len as u32,
            out0: out0 as u32,
            out_rows: c.out as u32,
            kv_base: kv_base as u32,
            rng_step: u.rng_step,
            seed_lo: u.seed_lo,
            seed_hi: u.seed_hi,
            temperature: u.temperature,
            inv_temp: u.inv_temp,
            top_k: u.top_k,
            top_p: u.top_p,
            mask_id: u.mask_id,
            valid_vocab: u.valid_vocab,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_are_the_fields_in_order() {
        let toks = [5u32; 40];
        let mut sp = crate::SampleParams::greedy(7, 100);
        sp.seed = 0x1234_5678_9abc_def0;
        sp.step = 9;
        sp.temperature = 0.5;
        sp.top_p = 0.9;
        let s = Step {
            tokens: &toks,
            start: 64,
            keep: 8,
            block_length: 32,
            out_rows: 32,
            sampling: sp,
            capture: Default::default(),
        };
        let w = StepParams::pass(&s, 0, 40, 32).words();
        let at = |f: &str| w[StepParams::index_of(f).unwrap()];
        assert_eq!(
            (at("start"), at("block"), at("n"), at("out_rows")),
            (64, 32, 40, 32)
        );
        assert_eq!(at("first_out_pos"), 64 + 40 - 32);
        assert_eq!((at("seed_lo"), at("seed_hi")), (0x9abc_def0, 0x1234_5678));
        assert_eq!(f32::from_bits(at("temperature")), 0.5);
        assert_eq!(f32::from_bits(at("inv_temp")), 2.0);
        assert_eq!(f32::from_bits(at("top_p")), 0.9);
        assert_eq!(
            (at("mask_id"), at("valid_vocab"), at("rng_step")),
            (7, 100, 9)
        );
        // A later chunk of the same step.
        let c = StepParams::pass(&s, 16, 24, 24);
        assert_eq!(
            (c.start, c.ids_offset, c.n, c.first_out_pos),
            (80, 16, 24, 72)
        );
    }
}

//! The per-step parameter words (`P_*` in kernels/common.cuh). A captured step reads them from
//! one device buffer, so a replay with another start position, block length or sampling setting
//! needs only a 48-byte upload before it.

use unmask_core::Step;

pub const P_START: usize = 0;
pub const P_BLOCK: usize = 1;
pub const P_FIRST_OUT_POS: usize = 2;
pub const P_STEP: usize = 3;
pub const P_SEED_LO: usize = 4;
pub const P_SEED_HI: usize = 5;
pub const P_TEMPERATURE: usize = 6;
pub const P_INV_TEMPERATURE: usize = 7;
pub const P_TOP_K: usize = 8;
pub const P_TOP_P: usize = 9;
pub const P_MASK: usize = 10;
pub const P_VALID_VOCAB: usize = 11;
pub const P_WORDS: usize = 12;

/// The words for one step (validated by the caller).
pub fn words(s: &Step) -> [u32; P_WORDS] {
    let sp = &s.sampling;
    let mut w = [0u32; P_WORDS];
    w[P_START] = s.start as u32;
    w[P_BLOCK] = s.block_length as u32;
    w[P_FIRST_OUT_POS] = (s.start + s.tokens.len() - s.out_rows) as u32;
    w[P_STEP] = sp.step;
    w[P_SEED_LO] = sp.seed as u32;
    w[P_SEED_HI] = (sp.seed >> 32) as u32;
    w[P_TEMPERATURE] = sp.temperature.to_bits();
    // The host sampler multiplies by this same f32 reciprocal.
    w[P_INV_TEMPERATURE] = if sp.temperature > 0.0 {
        (1.0 / sp.temperature).to_bits()
    } else {
        0
    };
    w[P_TOP_K] = sp.top_k.min(u32::MAX as usize) as u32;
    w[P_TOP_P] = sp.top_p.to_bits();
    w[P_MASK] = sp.mask;
    w[P_VALID_VOCAB] = sp.valid_vocab;
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::SOURCES;

    /// The Rust constants and the kernels' `#define`s must agree word for word.
    #[test]
    fn layout_matches_common_cuh() {
        let common = SOURCES[0].1;
        let want = [
            ("P_START", P_START),
            ("P_BLOCK", P_BLOCK),
            ("P_FIRST_OUT_POS", P_FIRST_OUT_POS),
            ("P_STEP", P_STEP),
            ("P_SEED_LO", P_SEED_LO),
            ("P_SEED_HI", P_SEED_HI),
            ("P_TEMPERATURE", P_TEMPERATURE),
            ("P_INV_TEMPERATURE", P_INV_TEMPERATURE),
            ("P_TOP_K", P_TOP_K),
            ("P_TOP_P", P_TOP_P),
            ("P_MASK", P_MASK),
            ("P_VALID_VOCAB", P_VALID_VOCAB),
            ("P_WORDS", P_WORDS),
        ];
        for (name, value) in want {
            let line = format!("#define {name} {value}\n");
            assert!(common.contains(&line), "common.cuh lacks `{}`", line.trim());
        }
    }

    #[test]
    fn words_carry_the_step() {
        let toks = [5u32; 40];
        let mut sp = unmask_core::SampleParams::greedy(7, 100);
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
        let w = words(&s);
        assert_eq!(w[P_START], 64);
        assert_eq!(w[P_FIRST_OUT_POS], 64 + 40 - 32);
        assert_eq!(w[P_SEED_LO], 0x9abc_def0);
        assert_eq!(w[P_SEED_HI], 0x1234_5678);
        assert_eq!(f32::from_bits(w[P_INV_TEMPERATURE]), 2.0);
        assert_eq!(f32::from_bits(w[P_TOP_P]), 0.9);
        assert_eq!((w[P_MASK], w[P_VALID_VOCAB], w[P_STEP]), (7, 100, 9));
    }
}

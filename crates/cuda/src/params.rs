//! The per-step parameter words (`P_*` in kernels/common.cuh). A captured step reads them from
//! one device buffer, so a replay with another start position, block length or sampling setting
//! needs only a 64-byte upload per sequence before it.

use unmask_core::step_params::FIELDS;

/// `P_*` of common.cuh: the word of each field of core's `StepParams` the kernels read.
pub const P_START: usize = 0;
pub const P_BLOCK: usize = 1;
pub const P_FIRST_OUT_POS: usize = 5;
pub const P_STEP: usize = 6;
pub const P_SEED_LO: usize = 7;
pub const P_SEED_HI: usize = 8;
pub const P_TEMPERATURE: usize = 9;
pub const P_INV_TEMPERATURE: usize = 10;
pub const P_TOP_K: usize = 11;
pub const P_TOP_P: usize = 12;
pub const P_MASK: usize = 13;
pub const P_VALID_VOCAB: usize = 14;
pub const P_WORDS: usize = FIELDS.len();

/// Each `P_*` and the core field it names.
pub const NAMED: [(&str, usize, &str); 12] = [
    ("P_START", P_START, "start"),
    ("P_BLOCK", P_BLOCK, "block"),
    ("P_FIRST_OUT_POS", P_FIRST_OUT_POS, "first_out_pos"),
    ("P_STEP", P_STEP, "rng_step"),
    ("P_SEED_LO", P_SEED_LO, "seed_lo"),
    ("P_SEED_HI", P_SEED_HI, "seed_hi"),
    ("P_TEMPERATURE", P_TEMPERATURE, "temperature"),
    ("P_INV_TEMPERATURE", P_INV_TEMPERATURE, "inv_temp"),
    ("P_TOP_K", P_TOP_K, "top_k"),
    ("P_TOP_P", P_TOP_P, "top_p"),
    ("P_MASK", P_MASK, "mask_id"),
    ("P_VALID_VOCAB", P_VALID_VOCAB, "valid_vocab"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::SOURCES;
    use unmask_core::step_params::StepParams;

    /// The Rust constants, core's layout and the kernels' `#define`s agree word for word.
    #[test]
    fn layout_matches_core_and_common_cuh() {
        let common = SOURCES[0].1;
        for (name, value, field) in NAMED {
            assert_eq!(
                StepParams::index_of(field),
                Some(value),
                "{name} is not core's {field}"
            );
            let line = format!("#define {name} {value}\n");
            assert!(common.contains(&line), "common.cuh lacks `{}`", line.trim());
        }
        let line = format!("#define P_WORDS {P_WORDS}\n");
        assert!(common.contains(&line), "common.cuh lacks `{}`", line.trim());
    }
}

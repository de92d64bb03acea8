//! LLaDA2.2 (SPEC §3c, `tests/fixtures/tiny-llada2.2/golden/SOURCES.md` §5): Levenshtein
//! refinement of a block. Masks are filled on a schedule over the block's original masks (plus
//! every new mask), written tokens are edited as in 2.1, and an edit may write DELETE (the
//! position goes, the block closes up and is padded with masks) or SPLIT (a mask is inserted
//! before the token, the block's last token falls off). A final round fills every mask with
//! plain tokens; written states that repeat are broken by a deterministic re-pick.

use super::{BlockPolicy, Writes};
use crate::backend::Sampled;
use crate::chat::SpecialIds;
use crate::decode::{schedule, DecodeParams};
use crate::error::{Error, Result};
use std::collections::HashSet;

/// Re-picks per forward of the anti-loop rule.
const ESCAPES: usize = 5;

pub struct Levenshtein {
    mask: u32,
    /// DELETE and SPLIT; `u32::MAX` where the model has none (then never written).
    delete: u32,
    split: u32,
    threshold: f32,
    editing_threshold: f32,
    max_post_steps: usize,
    max_steps: usize,
    steps: usize,
    /// Per block position: a prompt token (fixed, positional).
    prompt: Vec<bool>,
    /// Per block position: an original mask (moves with the edits).
    original: Vec<bool>,
    schedule: Vec<usize>,
    seen: HashSet<Vec<u32>>,
    post: usize,
    step: usize,
    /// Counted at the top of the iteration, used by its forward.
    masks: Vec<bool>,
    original_count: usize,
    /// The last forward changed nothing and left no mask: the block is final.
    stable: bool,
}

impl Levenshtein {
    pub fn new(p: &DecodeParams, ids: &SpecialIds) -> Self {
        Levenshtein {
            mask: ids.mask,
            delete: ids.delete.unwrap_or(u32::MAX),
            split: ids.split.unwrap_or(u32::MAX),
            threshold: p.threshold,
            editing_threshold: p.editing_threshold,
            max_post_steps: p.max_post_steps,
            max_steps: p.max_steps_per_block,
            // Not capped by gen_length in 2.2.
            steps: p.steps,
            prompt: Vec::new(),
            original: Vec::new(),
            schedule: Vec::new(),
            seen: HashSet::new(),
            post: 0,
            step: 0,
            masks: Vec::new(),
            original_count: 0,
            stable: false,
        }
    }

    fn is_edit(&self, t: u32) -> bool {
        t == self.delete || t == self.split
    }

    /// DELETE drops a position, SPLIT puts a new mask before the token the forward saw; the
    /// block is cut or padded with (new) masks back to its length. Tracking moves along.
    fn apply_edits(&mut self, tokens: &[u32], old: &[u32]) -> Vec<u32> {
        let n = tokens.len();
        let mut out = Vec::with_capacity(n + 1);
        let mut tracked = Vec::with_capacity(n + 1);
        for i in 0..n {
            if tokens[i] == self.delete {
                continue;
            }
            if tokens[i] == self.split {
                out.extend([self.mask, old[i]]);
                tracked.extend([false, self.original[i]]);
            } else {
                out.push(tokens[i]);
                tracked.push(self.original[i]);
            }
        }
        out.resize(n, self.mask);
        tracked.resize(n, false);
        self.original = tracked;
        out
    }
}

impl BlockPolicy for Levenshtein {
    fn begin(&mut self, block: &[u32], prompt: usize) -> Result<()> {
        if let Some(t) = block.iter().find(|&&t| self.is_edit(t)) {
            return Err(Error::Invalid(format!(
                "the block holds the edit token {t} before decoding"
            )));
        }
        self.prompt = (0..block.len()).map(|i| i < prompt).collect();
        self.original = self.prompt.iter().map(|&p| !p).collect();
        let initial = self.original.iter().filter(|&&o| o).count();
        self.schedule = if self.steps == 0 {
            Vec::new()
        } else {
            schedule::transfer_schedule(initial, self.steps)
        };
        self.seen.clear();
        self.post = 0;
        self.step = 0;
        // A block without masks (all prompt) needs no forward.
        self.stable = initial == 0;
        Ok(())
    }

    fn wants_forward(&mut self, block: &[u32]) -> Result<bool> {
        if self.stable {
            return Ok(false);
        }
        self.masks = (0..block.len())
            .map(|i| block[i] == self.mask && !self.prompt[i])
            .collect();
        self.original_count = (0..block.len())
            .filter(|&i| self.original[i] && block[i] == self.mask)
            .count();
        let mask_count = self.masks.iter().filter(|&&m| m).count();
        // The post-step counter resets while an original mask remains.
        self.post = if self.original_count == 0 {
            self.post + 1
        } else {
            0
        };
        if mask_count == 0 && self.post > self.max_post_steps {
            return Ok(false);
        }
        if self.step >= self.max_steps {
            return Err(Error::Invalid(format!(
                "block did not converge within max_steps_per_block ({}) forwards",
                self.max_steps
            )));
        }
        Ok(true)
    }

    fn apply(&mut self, block: &mut [u32], samples: &[Sampled]) -> Result<Writes> {
        let n = block.len();
        let old = block.to_vec();
        let masks = std::mem::take(&mut self.masks);
        let mask_count = masks.iter().filter(|&&m| m).count();
        let new_count = mask_count - self.original_count;
        let conf = |i: usize| samples[i].confidence;

        // Mask to token.
        let mut m2t: Vec<usize> = Vec::new();
        if mask_count > 0 {
            let masked: Vec<(usize, f32)> =
                (0..n).filter(|&i| masks[i]).map(|i| (i, conf(i))).collect();
            m2t = match self.schedule.get(self.step) {
                Some(&floor) => {
                    schedule::select_commits(&masked, self.threshold, floor + new_count)
                }
                None => masked.iter().map(|m| m.0).collect(),
            };
        }
        // Token to token (may propose DELETE or SPLIT).
        let t2t: Vec<usize> = (0..n)
            .filter(|&i| {
                !masks[i]
                    && !self.prompt[i]
                    && conf(i) > self.editing_threshold
                    && old[i] != samples[i].token
            })
            .collect();
        let final_round = if self.max_post_steps > 0 {
            self.post >= self.max_post_steps
        } else {
            self.original_count > 0
                && (0..n)
                    .filter(|&i| masks[i] && self.original[i])
                    .all(|i| m2t.binary_search(&i).is_ok())
        };
        let mut tok: Vec<u32> = samples.iter().map(|s| s.token).collect();
        if final_round {
            m2t = (0..n).filter(|&i| masks[i]).collect();
            for &i in m2t.iter().chain(&t2t) {
                if self.is_edit(tok[i]) {
                    tok[i] = samples[i]
                        .best_except(&[self.delete, self.split])
                        .ok_or_else(|| no_token(i))?;
                }
            }
        }
        let mut tokens = old.clone();
        for &i in m2t.iter().chain(&t2t) {
            tokens[i] = tok[i];
        }
        // Anti-loop: a written state seen before in this block is perturbed at its least
        // confident changed position (ties to the lower position), up to five times.
        let mut escapes = 0;
        let wrote = !m2t.is_empty() || !t2t.is_empty();
        if !final_round && wrote && self.seen.contains(&tokens) {
            for _ in 0..ESCAPES {
                let Some(i) = (0..n)
                    .filter(|&i| tokens[i] != old[i])
                    .min_by(|&a, &b| conf(a).total_cmp(&conf(b)).then(a.cmp(&b)))
                else {
                    break;
                };
                tokens[i] = samples[i]
                    .best_except(&[tokens[i]])
                    .ok_or_else(|| no_token(i))?;
                escapes += 1;
                if !self.seen.contains(&tokens) {
                    break;
                }
            }
        }
        self.seen.insert(tokens.clone());
        let deleted = (0..n).filter(|&i| tokens[i] == self.delete).collect();
        let split = (0..n).filter(|&i| tokens[i] == self.split).collect();
        let next = self.apply_edits(&tokens, &old);
        self.step += 1;
        self.stable = next == old && !next.contains(&self.mask);
        block.copy_from_slice(&next);
        let mut edited = t2t;
        edited.sort_unstable();
        Ok(Writes {
            filled: m2t,
            edited,
            deleted,
            split,
            written: tokens,
            escapes,
            final_round,
        })
    }
}

fn no_token(i: usize) -> Error {
    Error::Invalid(format!(
        "block position {i}: the vocabulary has no third-best token to re-pick"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::family::Decoder;

    const M: u32 = 100;
    const DEL: u32 = 101;
    const SPL: u32 = 102;

    fn ids() -> SpecialIds {
        SpecialIds {
            eos: 99,
            mask: M,
            valid_vocab: 110,
            eos_alt: None,
            delete: Some(DEL),
            split: Some(SPL),
            routing_block: None,
        }
    }

    fn params(post: usize) -> DecodeParams {
        DecodeParams {
            max_post_steps: post,
            ..DecodeParams::for_decoder(Decoder::Llada22)
        }
    }

    fn s(token: u32, confidence: f32, runners_up: [u32; 2]) -> Sampled {
        Sampled {
            token,
            confidence,
            ranked: [token, runners_up[0], runners_up[1]],
        }
    }

    #[test]
    fn a_delete_closes_the_block_up_and_pads_a_new_mask() {
        let mut p = Levenshtein::new(&params(16), &ids());
        let mut block = vec![7, 8, M, M];
        p.begin(&block, 2).unwrap();
        assert!(p.wants_forward(&block).unwrap());
        let w = p
            .apply(
                &mut block,
                &[
                    s(1, 0.9, [2, 3]),
                    s(1, 0.9, [2, 3]),
                    s(5, 0.9, [2, 3]),
                    s(6, 0.9, [2, 3]),
                ],
            )
            .unwrap();
        assert_eq!(block, vec![7, 8, 5, 6]);
        assert_eq!(w.filled, vec![2, 3]);
        // Position 3 (token 6) is deleted: the block closes up and ends on a new mask, which
        // does not count as an original one (post keeps counting).
        assert!(p.wants_forward(&block).unwrap());
        let w = p
            .apply(
                &mut block,
                &[
                    s(1, 0.9, [2, 3]),
                    s(1, 0.9, [2, 3]),
                    s(5, 0.9, [2, 3]),
                    s(DEL, 0.9, [6, 3]),
                ],
            )
            .unwrap();
        assert_eq!((w.edited.clone(), w.deleted.clone()), (vec![3], vec![3]));
        assert_eq!(block, vec![7, 8, 5, M]);
        assert!(p.wants_forward(&block).unwrap());
        assert_eq!(p.post, 2);
    }

    #[test]
    fn a_split_inserts_a_mask_and_pushes_the_last_token_out() {
        let mut p = Levenshtein::new(&params(16), &ids());
        let mut block = vec![1, 2, 3, 4];
        p.begin(&[M, M, M, M], 0).unwrap();
        // The block was filled earlier; now a SPLIT lands on position 1.
        assert!(p.wants_forward(&block).unwrap());
        let w = p
            .apply(
                &mut block,
                &[
                    s(1, 0.9, [2, 3]),
                    s(SPL, 0.9, [2, 3]),
                    s(3, 0.9, [2, 1]),
                    s(4, 0.9, [2, 3]),
                ],
            )
            .unwrap();
        assert_eq!(w.split, vec![1]);
        // The mask goes before the token the forward saw (2); token 4 falls off the end.
        assert_eq!(block, vec![1, M, 2, 3]);
    }

    #[test]
    fn the_final_round_fills_every_mask_with_plain_tokens() {
        // max_post_steps 0: the step that fills the last original mask is the final round, and
        // its DELETE/SPLIT become the best other token.
        let mut p = Levenshtein::new(&params(0), &ids());
        let mut block = vec![M, M];
        p.begin(&block, 0).unwrap();
        assert!(p.wants_forward(&block).unwrap());
        let w = p
            .apply(&mut block, &[s(DEL, 0.9, [SPL, 4]), s(5, 0.9, [6, 7])])
            .unwrap();
        assert!(w.final_round);
        assert_eq!(block, vec![4, 5]);
        // Nothing left to do: the next check ends the block without a forward.
        assert!(!p.wants_forward(&block).unwrap());
    }

    #[test]
    fn a_block_that_never_converges_hits_the_cap() {
        let mut pp = params(16);
        pp.max_steps_per_block = 3;
        let mut p = Levenshtein::new(&pp, &ids());
        let mut block = vec![M, M];
        p.begin(&block, 0).unwrap();
        // Every forward proposes new tokens everywhere: the block never settles.
        for step in 0..3 {
            assert!(p.wants_forward(&block).unwrap());
            let t = 10 + step;
            p.apply(&mut block, &[s(t, 0.9, [1, 2]), s(t + 5, 0.9, [1, 2])])
                .unwrap();
            assert_eq!(block, vec![t, t + 5]);
        }
        let e = p.wants_forward(&block).unwrap_err().to_string();
        assert!(e.contains("max_steps_per_block"), "{e}");
    }

    #[test]
    fn a_repeated_state_is_perturbed_at_its_least_confident_change() {
        let mut pp = params(16);
        pp.editing_threshold = 0.5;
        let mut p = Levenshtein::new(&pp, &ids());
        let mut block = vec![M, M];
        p.begin(&block, 0).unwrap();
        assert!(p.wants_forward(&block).unwrap());
        p.apply(&mut block, &[s(1, 0.9, [2, 3]), s(2, 0.9, [1, 3])])
            .unwrap();
        assert_eq!(block, vec![1, 2]);
        // Swap twice: [2, 1] then [1, 2] again, a state already seen.
        assert!(p.wants_forward(&block).unwrap());
        p.apply(&mut block, &[s(2, 0.9, [1, 3]), s(1, 0.9, [2, 3])])
            .unwrap();
        assert_eq!(block, vec![2, 1]);
        assert!(p.wants_forward(&block).unwrap());
        let w = p
            .apply(&mut block, &[s(1, 0.8, [2, 3]), s(2, 0.7, [3, 1])])
            .unwrap();
        // Position 1 (0.7) is the least confident change: it takes its runner-up, 3.
        assert_eq!(w.escapes, 1);
        assert_eq!(block, vec![1, 3]);
    }
}

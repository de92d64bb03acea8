//! One logits row to one (token, confidence): greedy or seeded temperature/top-k/top-p (SPEC §3).
//! This is the host definition every device sampler reproduces.

use super::rng;
use crate::backend::{SampleParams, Sampled, NO_TOKEN};
use crate::reference::{fast, ops};

/// Whether the decoder may ever produce `id`.
#[inline]
fn allowed(id: usize, p: &SampleParams) -> bool {
    id as u32 != p.mask && (id as u32) < p.valid_vocab
}

/// Whether any of `c` is greater than `x` (never for a NaN), without a branch per value. The
/// scans for the largest values go by chunks of 8 and skip every chunk where this is false:
/// most of a row, once its first chunks are seen.
#[inline(always)]
fn any_above(c: &[f32], x: f32) -> bool {
    c.iter().fold(false, |a, &v| a | (v > x))
}

/// The largest value of the row, NaNs ignored as `f32::max` ignores them, in eight running
/// maxima (a maximum does not depend on the order it is taken in).
fn row_max(row: &[f32]) -> f32 {
    let chunks = row.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut m = [f32::NEG_INFINITY; 8];
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    m.iter().fold(tail, |a, &v| a.max(v))
}

pub fn sample_row(logits: &[f32], p: &SampleParams, position: u32) -> Sampled {
    let mut s = if p.temperature > 0.0 {
        sample_seeded(logits, p, position)
    } else {
        greedy(logits, p)
    };
    s.ranked = ranked(logits, p);
    s
}

/// The three allowed ids with the largest logits, descending, ties to the lower id
/// ([`NO_TOKEN`] past the end of a smaller vocabulary).
pub fn ranked(logits: &[f32], p: &SampleParams) -> [u32; 3] {
    let mut top = [(NO_TOKEN, f32::NEG_INFINITY); 3];
    for (ci, c) in logits.chunks(8).enumerate() {
        if top[2].0 != NO_TOKEN && !any_above(c, top[2].1) {
            continue;
        }
        for (j, &v) in c.iter().enumerate() {
            let i = ci * 8 + j;
            if !allowed(i, p) {
                continue;
            }
            // Strictly greater moves an id up: an equal value stays behind the lower id.
            let mut at = 3;
            while at > 0 && (top[at - 1].0 == NO_TOKEN || v > top[at - 1].1) {
                at -= 1;
            }
            if at < 3 {
                top.copy_within(at..2, at + 1);
                top[at] = (i as u32, v);
            }
        }
    }
    top.map(|(i, _)| i)
}

/// Argmax over the allowed ids (ties to the lower id); confidence is the probability under
/// the softmax of the whole row.
pub fn greedy(logits: &[f32], p: &SampleParams) -> Sampled {
    let max_all = row_max(logits);
    let mut best = usize::MAX;
    let mut best_v = f32::NEG_INFINITY;
    for (ci, c) in logits.chunks(8).enumerate() {
        if best != usize::MAX && !any_above(c, best_v) {
            continue;
        }
        for (j, &v) in c.iter().enumerate() {
            let i = ci * 8 + j;
            if allowed(i, p) && (best == usize::MAX || v > best_v) {
                best = i;
                best_v = v;
            }
        }
    }
    if best == usize::MAX {
        return Sampled::new(0, 0.0);
    }
    // The exponentials are `ops::exp` (f32, within 2 ulp) summed in f64: the same bits in
    // SIMD and in plain loops, so every backend's host sampler agrees.
    let sum = fast::softmax::exp_sum(logits, max_all);
    Sampled::new(
        best as u32,
        (ops::exp(best_v - max_all) as f64 / sum) as f32,
    )
}

/// Temperature, then top-k (keep logits >= the k-th largest), then top-p (keep the most likely
/// ids until their mass reaches p; ties at the cut are kept), then an inverse-CDF draw in id order
/// with the counter-based uniform. Confidence is the drawn id's probability after filtering.
pub fn sample_seeded(logits: &[f32], p: &SampleParams, position: u32) -> Sampled {
    let inv_t = 1.0 / p.temperature;
    let mut cand: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .filter(|&(i, v)| allowed(i, p) && v.is_finite())
        .map(|(i, &v)| (i, v * inv_t))
        .collect();
    if cand.is_empty() {
        return greedy(logits, p);
    }
    // Descending by value, ties to the lower id.
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 && p.top_k < cand.len() {
        let kth = cand[p.top_k - 1].1;
        cand.retain(|c| c.1 >= kth);
    }
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= total);
    if p.top_p < 1.0 {
        let mut cum = 0.0f32;
        let mut cut = probs.len();
        for (i, &q) in probs.iter().enumerate() {
            cum += q;
            if cum >= p.top_p {
                cut = i + 1;
                break;
            }
        }
        let last = probs[cut - 1];
        while cut < probs.len() && probs[cut] >= last {
            cut += 1;
        }
        cand.truncate(cut);
        probs.truncate(cut);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    // Draw in id order so that a device can do it with a prefix sum.
    let mut order: Vec<usize> = (0..cand.len()).collect();
    order.sort_by_key(|&i| cand[i].0);
    let u = rng::uniform(p.seed, position, p.step);
    let mut cum = 0.0f32;
    let mut pick = order[order.len() - 1];
    for &i in &order {
        cum += probs[i];
        if u < cum {
            pick = i;
            break;
        }
    }
    Sampled::new(cand[pick].0 as u32, probs[pick])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SampleParams {
        SampleParams::greedy(3, 6)
    }

    #[test]
    fn greedy_skips_mask_and_padding_but_keeps_full_softmax() {
        // id 3 is the mask, ids >= 6 are padding: both have the largest logits.
        let logits = [0.0, 1.0, 2.0, 9.0, 0.5, 1.5, 10.0, 11.0];
        let s = greedy(&logits, &params());
        assert_eq!(s.token, 2);
        let max = 11.0f64;
        let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
        // Within the f32 exponentials' error of the exact softmax.
        assert!((s.confidence as f64 - (2.0 - max).exp() / sum).abs() < 1e-7);
    }

    #[test]
    fn ranked_keeps_the_three_best_allowed_ids() {
        // ids 3 (mask) and >= 6 (padding) are never ranked; 1 and 4 tie: the lower id first.
        let logits = [0.0, 2.0, 1.0, 9.0, 2.0, 5.0, 10.0];
        assert_eq!(ranked(&logits, &params()), [5, 1, 4]);
        assert_eq!(ranked(&[1.0, 0.5], &params()), [0, 1, NO_TOKEN]);
        let s = sample_row(&logits, &params(), 0);
        assert_eq!((s.token, s.ranked[0]), (5, 5));
        assert_eq!(s.best_except(&[5, 1]), Some(4));
    }

    #[test]
    fn chunk_skipping_scans_pick_what_a_value_by_value_scan_picks() {
        // The value-by-value definitions the chunked scans replace.
        fn naive(logits: &[f32], p: &SampleParams) -> (usize, [u32; 3]) {
            let mut best = usize::MAX;
            let mut best_v = f32::NEG_INFINITY;
            let mut ids: Vec<usize> = (0..logits.len()).filter(|&i| allowed(i, p)).collect();
            for &i in &ids {
                if best == usize::MAX || logits[i] > best_v {
                    (best, best_v) = (i, logits[i]);
                }
            }
            // Stable sort: equal values keep the lower id first.
            ids.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap());
            let mut top = [NO_TOKEN; 3];
            for (t, &i) in top.iter_mut().zip(&ids) {
                *t = i as u32;
            }
            (best, top)
        }
        let mut rng = crate::synthetic::SplitMix(5);
        for len in [3, 8, 13, 64, 1001] {
            for round in 0..20 {
                // Few distinct values (many ties), the maximum in the mask or padding, or in
                // the last, partial chunk.
                let mut row: Vec<f32> = (0..len).map(|_| (rng.symmetric() * 4.0).round()).collect();
                let p = SampleParams::greedy((round % len) as u32, (len - round % 3) as u32);
                row[(round * 7) % len] = 9.0;
                let (best, top) = naive(&row, &p);
                let s = greedy(&row, &p);
                assert_eq!(s.token as usize, best, "len {len} round {round}");
                assert_eq!(ranked(&row, &p), top, "len {len} round {round}");
            }
        }
    }

    #[test]
    fn greedy_ties_go_to_the_lower_id() {
        let s = greedy(&[1.0, 5.0, 5.0, 0.0], &params());
        assert_eq!(s.token, 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_filtered() {
        let logits = [1.0, 1.2, 0.9, 5.0, 1.1, 0.3, 8.0];
        let mut p = params();
        p.temperature = 1.0;
        p.top_k = 2;
        p.seed = 42;
        let mut seen = std::collections::BTreeSet::new();
        for pos in 0..200 {
            let a = sample_seeded(&logits, &p, pos);
            assert_eq!(a, sample_seeded(&logits, &p, pos));
            seen.insert(a.token);
        }
        // top-2 among allowed ids (0,1,2,4,5): 1 and 4.
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 4]);
        p.top_k = 0;
        p.top_p = 0.2;
        for pos in 0..50 {
            let a = sample_seeded(&logits, &p, pos);
            assert_eq!(a.token, 1, "top-p keeps only the most likely id here");
            assert!((a.confidence - 1.0).abs() < 1e-6);
        }
    }
}

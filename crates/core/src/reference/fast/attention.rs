//! The attention of `ops::attention` over 8-lane vectors: each score a SIMD dot product in the
//! reference's lane order, the softmax's exponentials eight at a time (`Lanes::exp`, bit for bit
//! `ops::exp`), the weighted sum of values eight dimensions at a time. The sum of the weights
//! stays a sequential scalar sum, as the reference's, so the result is the reference's bit for
//! bit. Head dimensions that are not a multiple of 8 take the reference loop.

use super::super::ops;
use super::super::parallel::map_chunks;
use super::isa::Isa;
use super::lanes::Lanes;
use crate::graph::Heads;
use std::ops::Range;

/// `ops::attention` in SIMD where the machine has it and `heads.dim % 8 == 0`; `false` when
/// the caller must run the reference loop.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f32],
    heads: Heads,
    k_cache: &[f32],
    v_cache: &[f32],
    start: usize,
    block: usize,
    out: &mut [f32],
) -> bool {
    let Some(isa) = Isa::detect() else {
        return false;
    };
    if heads.dim == 0 || !heads.dim.is_multiple_of(8) {
        return false;
    }
    let a = Args {
        qkv,
        heads,
        k_cache,
        v_cache,
        start,
        block,
    };
    let d = heads.dim;
    let width = (heads.q + 2 * heads.kv) * d;
    let n = qkv.len() / width;
    let work = n * heads.q * (start + n) * d;
    // Rows over the pool; inside each part the instruction set's own compiled loop (a closure
    // does not inherit target features, so the kernel is called, not inlined, here).
    let parts = map_chunks(n, work, |rows| {
        let mut part = vec![0f32; rows.len() * heads.q * d];
        // SAFETY: `isa` came from Isa::detect on this machine; the head dim is a multiple of 8.
        unsafe { isa.attention(&a, rows.clone(), &mut part) };
        (rows, part)
    });
    let w = heads.q * d;
    for (rows, part) in parts {
        out[rows.start * w..rows.end * w].copy_from_slice(&part);
    }
    true
}

pub struct Args<'a> {
    qkv: &'a [f32],
    heads: Heads,
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    start: usize,
    block: usize,
}

/// The kernel over lanes `L` for window rows `rows`, into `part` (`[rows, q heads * dim]`,
/// zeroed); isa/ compiles it with its target features.
///
/// # Safety
/// `L`'s instruction set is present; `heads.dim` is a multiple of 8.
#[inline(always)]
pub unsafe fn run<L: Lanes>(a: &Args, rows: Range<usize>, part: &mut [f32]) {
    let (heads, start, block) = (a.heads, a.start, a.block);
    let d = heads.dim;
    let width = (heads.q + 2 * heads.kv) * d;
    let kvw = heads.kv * d;
    let n = a.qkv.len() / width;
    let group = heads.q / heads.kv;
    let scale = 1.0 / (d as f32).sqrt();
    let end = start + n;
    let mut scores = vec![0f32; end];
    let (q_all, k_all, v_all) = (a.qkv.as_ptr(), a.k_cache.as_ptr(), a.v_cache.as_ptr());
    for (ri, i) in rows.enumerate() {
        let s = start + i;
        let visible = end.min((s / block + 1) * block);
        for h in 0..heads.q {
            let q = q_all.add(i * width + h * d);
            let kvh = h / group;
            let dot = |t: usize| {
                let k = k_all.add(t * kvw + kvh * d);
                let mut acc = L::zero();
                for c in (0..d).step_by(8) {
                    acc = L::add(acc, L::mul(L::load(q.add(c)), L::load(k.add(c))));
                }
                acc
            };
            // Eight keys at a time, their sums finished together; the maximum over lanes (a
            // maximum does not depend on the order).
            let whole = visible / 8 * 8;
            let sv = L::splat(scale);
            let mut mv = L::splat(f32::NEG_INFINITY);
            for t in (0..whole).step_by(8) {
                let accs = [0, 1, 2, 3, 4, 5, 6, 7].map(|j| dot(t + j));
                let sc = L::mul(L::hsum8(accs), sv);
                sc.store(scores.as_mut_ptr().add(t));
                mv = L::max(mv, sc);
            }
            let mut lanes = [0f32; 8];
            mv.store(lanes.as_mut_ptr());
            let mut max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for (t, sc) in scores[..visible].iter_mut().enumerate().skip(whole) {
                *sc = dot(t).hsum() * scale;
                max = max.max(*sc);
            }
            let m = L::splat(max);
            for t in (0..whole).step_by(8) {
                let p = scores.as_mut_ptr().add(t);
                L::sub(L::load(p), m).exp().store(p);
            }
            for sc in &mut scores[whole..visible] {
                *sc = ops::exp(*sc - max);
            }
            let mut sum = 0f32;
            for &sc in &scores[..visible] {
                sum += sc;
            }
            // The weights p = score / sum (IEEE division, lane by lane as the scalar one).
            let inv = L::splat(sum);
            for t in (0..whole).step_by(8) {
                let p = scores.as_mut_ptr().add(t);
                L::div(L::load(p), inv).store(p);
            }
            for sc in &mut scores[whole..visible] {
                *sc /= sum;
            }
            // out += p_t * v_t over the keys in order, 32 dimensions at a time held in registers.
            let o = part[(ri * heads.q + h) * d..(ri * heads.q + h + 1) * d].as_mut_ptr();
            for g in (0..d).step_by(32) {
                let lanes = ((d - g) / 8).min(4);
                let mut acc = [L::zero(); 4];
                for (t, &p) in scores[..visible].iter().enumerate() {
                    let p = L::splat(p);
                    let v = v_all.add(t * kvw + kvh * d + g);
                    for (j, a) in acc[..lanes].iter_mut().enumerate() {
                        *a = L::add(*a, L::mul(p, L::load(v.add(8 * j))));
                    }
                }
                for (j, a) in acc[..lanes].iter().enumerate() {
                    a.store(o.add(g + 8 * j));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_reference_bit_for_bit() {
        if Isa::detect().is_none() {
            return eprintln!("fast attention: SKIPPED (no SIMD kernels for this machine)");
        }
        let mut rng = crate::synthetic::SplitMix(3);
        // Head dims 8 and 64, windows inside and across blocks, a start past a block edge,
        // contexts that are and are not multiples of 8.
        for (q, kv, d, start, n, block) in [
            (2, 1, 8, 0, 3, 4),
            (4, 2, 64, 37, 9, 8),
            (8, 2, 32, 200, 32, 32),
        ] {
            let heads = Heads { q, kv, dim: d };
            let width = (q + 2 * kv) * d;
            let end = start + n;
            let qkv: Vec<f32> = (0..n * width).map(|_| 4.0 * rng.symmetric()).collect();
            let kc: Vec<f32> = (0..end * kv * d).map(|_| 4.0 * rng.symmetric()).collect();
            let vc: Vec<f32> = (0..end * kv * d).map(|_| rng.symmetric()).collect();
            let mut want = vec![0f32; n * q * d];
            ops::attention(&qkv, heads, &kc, &vc, start, block, &mut want);
            let mut got = vec![f32::NAN; n * q * d];
            assert!(attention(&qkv, heads, &kc, &vc, start, block, &mut got));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{q}/{kv}x{d} [{i}]: {g} vs {w}");
            }
        }
        // A head dim that is not a multiple of 8 is left to the reference.
        let h = Heads {
            q: 1,
            kv: 1,
            dim: 12,
        };
        assert!(!attention(
            &[0.0; 36],
            h,
            &[0.0; 12],
            &[0.0; 12],
            0,
            1,
            &mut [0.0; 12]
        ));
    }
}

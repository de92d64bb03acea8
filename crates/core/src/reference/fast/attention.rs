//! The attention of `ops::attention` over 8-lane vectors: each score a SIMD dot product in the
//! reference's lane order, the softmax's exponentials eight at a time (`Lanes::exp`, bit for bit
//! `ops::exp`) summed in the lanes as `ops::sum` sums, the weighted sum of values eight
//! dimensions at a time, so the result is the reference's bit for bit. Head dimensions that
//! are not a multiple of 8 take the reference loop.

use super::super::ops;
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
    ops::by_rows(n, heads.q * d, work, out, |rows| {
        let mut part = vec![0f32; rows.len() * heads.q * d];
        // SAFETY: `isa` came from Isa::detect on this machine; the head dim is a multiple of 8.
        unsafe { isa.attention(&a, rows, &mut part) };
        part
    });
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
/// zeroed); isa/ compiles it with its target features. Query heads that share a KV head go
/// in pairs through the weighted sum of values, each value load serving both (tiny model
/// after 1024 positions: 1.23 -> 1.13 ms of attention a window step).
///
/// # Safety
/// `L`'s instruction set is present; `heads.dim` is a multiple of 8.
#[inline(always)]
pub unsafe fn run<L: Lanes>(a: &Args, rows: Range<usize>, part: &mut [f32]) {
    let heads = a.heads;
    let d = heads.dim;
    let width = (heads.q + 2 * heads.kv) * d;
    let n = a.qkv.len() / width;
    let group = heads.q / heads.kv;
    let end = a.start + n;
    let mut scores = vec![0f32; 2 * end];
    let (first, second) = scores.split_at_mut(end);
    for (ri, i) in rows.enumerate() {
        let s = a.start + i;
        let visible = end.min((s / a.block + 1) * a.block);
        let mut h = 0;
        while h < heads.q {
            let kvh = h / group;
            let v = a.v_cache.as_ptr().add(kvh * d);
            let o = part.as_mut_ptr().add((ri * heads.q + h) * d);
            weights::<L>(a, i, h, &mut first[..visible]);
            if h + 1 < heads.q && (h + 1) / group == kvh {
                weights::<L>(a, i, h + 1, &mut second[..visible]);
                weighted_values::<L, 2>(
                    [&first[..visible], &second[..visible]],
                    v,
                    heads,
                    [o, o.add(d)],
                );
                h += 2;
            } else {
                weighted_values::<L, 1>([&first[..visible]], v, heads, [o]);
                h += 1;
            }
        }
    }
}

/// The softmax weights of query head `h` of window row `i` over the `p.len()` visible keys,
/// into `p`: the scores, their exponentials and the division by their sum as the reference
/// computes them.
#[inline(always)]
unsafe fn weights<L: Lanes>(a: &Args, i: usize, h: usize, p: &mut [f32]) {
    let heads = a.heads;
    let d = heads.dim;
    let width = (heads.q + 2 * heads.kv) * d;
    let kvw = heads.kv * d;
    let visible = p.len();
    let q = a.qkv.as_ptr().add(i * width + h * d);
    let k_head = a.k_cache.as_ptr().add(h / (heads.q / heads.kv) * d);
    let dot = |t: usize| dot_lanes::<L>(q, k_head.add(t * kvw), d);
    // Eight keys at a time, their sums finished together; the maximum over lanes (a maximum
    // does not depend on the order).
    let scale = 1.0 / (d as f32).sqrt();
    let whole = visible / 8 * 8;
    let sv = L::splat(scale);
    let mut mv = L::splat(f32::NEG_INFINITY);
    for t in (0..whole).step_by(8) {
        // Written out, not array::map: a closure the library calls need not be inlined, and
        // then its intrinsics are calls compiled without the target features.
        let accs = [
            dot(t),
            dot(t + 1),
            dot(t + 2),
            dot(t + 3),
            dot(t + 4),
            dot(t + 5),
            dot(t + 6),
            dot(t + 7),
        ];
        let sc = L::mul(L::hsum8(accs), sv);
        sc.store(p.as_mut_ptr().add(t));
        mv = L::max(mv, sc);
    }
    let mut lanes = [0f32; 8];
    mv.store(lanes.as_mut_ptr());
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for (t, sc) in p.iter_mut().enumerate().skip(whole) {
        *sc = dot(t).hsum() * scale;
        max = max.max(*sc);
    }
    // The exponentials and, in the same pass, ops::sum's eight partial sums of them.
    let m = L::splat(max);
    let mut lane_sums = L::zero();
    for t in (0..whole).step_by(8) {
        let at = p.as_mut_ptr().add(t);
        let e = L::sub(L::load(at), m).exp();
        e.store(at);
        lane_sums = L::add(lane_sums, e);
    }
    let mut sum = lane_sums.hsum();
    for sc in &mut p[whole..] {
        *sc = ops::exp(*sc - max);
        sum += *sc;
    }
    // The weights score / sum (IEEE division, lane by lane as the scalar one).
    let inv = L::splat(sum);
    for t in (0..whole).step_by(8) {
        let at = p.as_mut_ptr().add(t);
        L::div(L::load(at), inv).store(at);
    }
    for sc in &mut p[whole..] {
        *sc /= sum;
    }
}

/// The eight lane sums of `q · k` over `d` dimensions (`hsum` finishes them).
#[inline(always)]
unsafe fn dot_lanes<L: Lanes>(q: *const f32, k: *const f32, d: usize) -> L {
    let mut acc = L::zero();
    for c in (0..d).step_by(8) {
        acc = L::add(acc, L::mul(L::load(q.add(c)), L::load(k.add(c))));
    }
    acc
}

/// `out[j] = Σ_t p[j][t] * v_t` for `H` query heads of one KV head (`v` its first value), the
/// keys in order as the reference adds them: 32 dimensions at a time in registers (a fixed
/// four per head: a count known only at run time kept them in memory), then the last
/// 8-dimension groups one at a time.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops on purpose: see below
unsafe fn weighted_values<L: Lanes, const H: usize>(
    p: [&[f32]; H],
    v: *const f32,
    heads: Heads,
    out: [*mut f32; H],
) {
    let (d, kvw) = (heads.dim, heads.kv * heads.dim);
    let visible = p[0].len();
    // Plain index loops: closures (array::map, zip) do not inherit the target features, and
    // their intrinsics stop being inlined.
    let mut g = 0;
    while g + 32 <= d {
        let mut acc = [[L::zero(); 4]; H];
        for t in 0..visible {
            let vt = v.add(t * kvw + g);
            let vs = [
                L::load(vt),
                L::load(vt.add(8)),
                L::load(vt.add(16)),
                L::load(vt.add(24)),
            ];
            for k in 0..H {
                let w = L::splat(*p[k].get_unchecked(t));
                for j in 0..4 {
                    acc[k][j] = L::add(acc[k][j], L::mul(w, vs[j]));
                }
            }
        }
        for k in 0..H {
            for j in 0..4 {
                acc[k][j].store(out[k].add(g + 8 * j));
            }
        }
        g += 32;
    }
    while g < d {
        let mut acc = [L::zero(); H];
        for t in 0..visible {
            let x = L::load(v.add(t * kvw + g));
            for k in 0..H {
                acc[k] = L::add(acc[k], L::mul(L::splat(*p[k].get_unchecked(t)), x));
            }
        }
        for k in 0..H {
            acc[k].store(out[k].add(g));
        }
        g += 8;
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
        // Head dims 8, 16, 40 (32 in registers and 8 more) and 64, groups of 1, 2, 3 (a pair
        // and a lone head) and 4, windows inside and across
        // blocks, a start past a block edge, contexts that are and are not multiples of 8.
        for (q, kv, d, start, n, block) in [
            (2, 1, 8, 0, 3, 4),
            (2, 2, 40, 5, 6, 4),
            (3, 1, 16, 9, 4, 8),
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

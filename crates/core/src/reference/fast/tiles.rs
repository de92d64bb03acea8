//! The register-tile matmul over any [`Lanes`]: the window's rows and the weight rows meet in
//! tiles of `L::TOKENS` tokens × 2 weight rows, each weight vector widened once and used for
//! every token of the tile. Rows come in blocks (matmul.rs) that stay in cache while every
//! token group passes over them, so each weight is read from memory once per window.
//!
//! Each dot product is the reference's (`ops::dot`) operation for operation: lane `l` sums the
//! products of the positions `l mod 8` with a multiply and an add (no fused multiply-add), the
//! lanes are added in its order, then the tail. So the results are bit for bit the reference's.
//!
//! Everything here is `#[inline(always)]`: it is compiled into each ISA's entry point (isa/),
//! which carries the target features.

use super::super::matrix::{Matrix, Weights};
use super::lanes::{cast, Bf16, Elem, Lanes, F16};
use std::ops::Range;

/// One block of a matmul: weight rows `rows` of `w` against every token of `x` (`k` wide),
/// into a part of the output `width` columns wide whose first column is weight row `first`.
pub struct Block<'a> {
    pub x: &'a [f32],
    pub k: usize,
    pub w: &'a Matrix,
    pub rows: Range<usize>,
    pub first: usize,
    pub width: usize,
}

/// `b` into `part` (`[n, b.width]`). Packed (q8_0/q4) rows go through `scratch` as f32, a block
/// at a time (the reference's values).
#[inline(always)]
pub unsafe fn block<L: Lanes>(b: &Block, part: &mut [f32], scratch: &mut [f32]) {
    let (x, k, w, width) = (b.x, b.k, b.w, b.width);
    let block = b.rows.clone();
    let col = block.start - b.first;
    match w.weights() {
        Weights::F32(v) => rows::<L, f32>(x, k, v, block, col, width, part),
        Weights::Bf16(v) => rows::<L, Bf16>(x, k, cast(v), block, col, width, part),
        Weights::F16(v) => rows::<L, F16>(x, k, cast(v), block, col, width, part),
        Weights::Packed => {
            for (i, r) in block.clone().enumerate() {
                w.row_into(r, &mut scratch[i * k..(i + 1) * k]);
            }
            let widened = &scratch[..block.len() * k];
            rows::<L, f32>(x, k, widened, 0..block.len(), col, width, part)
        }
    }
}

/// Rows `block` of `w` (row-major, `k` wide) into `part`'s columns from `col` on.
#[inline(always)]
unsafe fn rows<L: Lanes, W: Elem>(
    x: &[f32],
    k: usize,
    w: &[W],
    block: Range<usize>,
    col: usize,
    width: usize,
    part: &mut [f32],
) {
    let first = block.start;
    let n = x.len() / k;
    let mut t = 0;
    while t < n {
        let tn = L::TOKENS.min(n - t);
        let mut r = block.start;
        while r < block.end {
            let pair = r + 1 < block.end;
            let w0 = &w[r * k..(r + 1) * k];
            let w1 = if pair {
                &w[(r + 1) * k..(r + 2) * k]
            } else {
                w0
            };
            let sums = match tn {
                4 => tile::<L, W, 4>(x, t, k, w0, w1),
                3 => tile::<L, W, 3>(x, t, k, w0, w1),
                2 => tile::<L, W, 2>(x, t, k, w0, w1),
                _ => tile::<L, W, 1>(x, t, k, w0, w1),
            };
            for (i, s) in sums.iter().enumerate().take(tn) {
                let at = (t + i) * width + col + r - first;
                part[at] = s[0];
                if pair {
                    part[at + 1] = s[1];
                }
            }
            r += 2;
        }
        t += tn;
    }
}

/// The most tokens a tile has (`Lanes::TOKENS` is at most this).
const MAX_TOKENS: usize = 4;

/// Dot products of tokens `t..t+T` with two weight rows.
#[inline(always)]
unsafe fn tile<L: Lanes, W: Elem, const T: usize>(
    x: &[f32],
    t: usize,
    k: usize,
    w0: &[W],
    w1: &[W],
) -> [[f32; 2]; MAX_TOKENS] {
    let mut a0 = [L::zero(); T];
    let mut a1 = [L::zero(); T];
    let body = k - k % 8;
    let xp = x.as_ptr().add(t * k);
    let mut i = 0;
    while i < body {
        let v0: L = W::load8(w0, i);
        let v1: L = W::load8(w1, i);
        for j in 0..T {
            let xv = L::load(xp.add(j * k + i));
            // Multiply, then add (no FMA): the reference's roundings exactly.
            a0[j] = L::add(a0[j], L::mul(xv, v0));
            a1[j] = L::add(a1[j], L::mul(xv, v1));
        }
        i += 8;
    }
    let mut out = [[0f32; 2]; MAX_TOKENS];
    for j in 0..T {
        let xr = &x[(t + j) * k..(t + j + 1) * k];
        let (mut s0, mut s1) = (a0[j].hsum(), a1[j].hsum());
        for i in body..k {
            s0 += xr[i] * w0[i].to_f32();
            s1 += xr[i] * w1[i].to_f32();
        }
        out[j] = [s0, s1];
    }
    out
}

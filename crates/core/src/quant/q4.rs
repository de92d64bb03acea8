//! `q4`: blocks of 32 four-bit codes with a 16-bit block header: an 8-bit float scale and an
//! 8-bit offset (4.5 bits per weight). It is asymmetric like llama.cpp's Q4_1 (each block's grid
//! is placed between its own minimum and maximum) at Q4_0's size, because the header spends 8
//! bits on each number instead of 16; the encoder then searches the encoded scales and offsets
//! for the smallest squared error. On Gaussian weights its relative RMSE is about 0.072, against
//! 0.086 for Q4_0 at the same 4.5 bits.
//!
//! # Byte layout of a `[rows, cols]` tensor (the contract for every kernel)
//!
//! `nb` = [`blocks_per_row`]`(cols)` = `max(1, cols / 32)` blocks per row; block `(r, b)` covers
//! columns `32b .. 32b + 32` of row `r`, except the last, which runs to `cols` (32 to 63
//! columns, or `cols` when that is under 32). Its index is `blk = r * nb + b`. All numbers are
//! little-endian. `rb = ceil(cols / 2)` code bytes per row.
//!
//! ```text
//! offset 0                 codes: rows * rb bytes; column c of row r is the 4-bit code q of
//!                          byte r * rb + c / 2, low nibble when c is even (when cols % 32 == 0,
//!                          as u32 words: word blk * 4 + i / 8, bits 4 * (i % 8), for column
//!                          32b + i)
//! offset rows * rb         headers: rows * nb u16; block blk's header is bytes
//!                          [rows*rb + 2*blk, +2) = k | c << 8
//! total                    rows * (rb + 2 * nb) bytes
//! ```
//!
//! - `k` (low byte) is the scale `d` as an unsigned 8-bit float with 5 exponent and 3 mantissa
//!   bits: `k = 0` is `d = 0`, otherwise `d = 2^((k >> 3) - 20) * (1 + (k & 7) / 8)`, which is
//!   exactly the f32 with bits `((k >> 3) + 107) << 23 | (k & 7) << 20` (2^-20 .. 3840).
//! - `c` (high byte) is the offset in sixteenths of a step: the block's lowest level is `-d*c/16`.
//! - Value: `w = d * (f32(q) - f32(c) / 16)` (the parenthesis is exact in f32; one rounding).
//!   Equivalently `(d / 16) * f32(16 q - c)`, the same f32.
//!
//! An odd row's unused last nibble is 0. GPU kernels read the 32-column shape of
//! [`Packed::padded`](super::Packed::padded), which is these bytes when `cols % 32 == 0`.

#[cfg(doc)]
use super::blocks_per_row;
use super::BlockStats;
use crate::error::{Error, Result};

/// Scale search: the block's range is shrunk by 2.5 % steps this many times (clipping the
/// extremes trades a few large errors for a finer grid), and each try tests the three nearest
/// encoded scales with a refined offset.
const TRIES: usize = 8;

/// The scale a code `k` stands for (see the layout above).
#[inline]
pub fn scale(k: u8) -> f32 {
    if k == 0 {
        0.0
    } else {
        f32::from_bits(((k as u32 >> 3) + 107) << 23 | (k as u32 & 7) << 20)
    }
}

/// The code whose scale is nearest to `d > 0`, or an error when `d` is beyond the largest.
fn nearest_code(d: f32) -> Result<u8> {
    if d <= 0.0 {
        return Ok(0);
    }
    if d < scale(1) {
        return Ok(if d < scale(1) / 2.0 { 0 } else { 1 });
    }
    let bits = d.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127 + 20;
    let mut m = ((bits & 0x7f_ffff) + (1 << 19)) >> 20;
    if m == 8 {
        e += 1;
        m = 0;
    }
    if e > 31 {
        return Err(Error::Invalid(format!(
            "a block's scale {d} is beyond q4's range (values up to about 57600)"
        )));
    }
    Ok(((e as u32) << 3 | m) as u8)
}

/// The 4-bit code nearest to `x` on the grid `d * (q - off)`, as an f32 integer 0..=15.
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with plain float
/// arithmetic, so the loops below vectorise (`f32::round` is a library call on baseline x86-64).
#[inline]
fn code(x: f32, inv_d: f32, off: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    ((x * inv_d + off).clamp(0.0, 15.0) + ROUND) - ROUND
}

/// Squared error of `x` on the grid `(d, c)`, and the offset code that would fit the same codes
/// best (the mean residual, in sixteenths of a step). Eight lanes so the compiler vectorises.
fn fit(x: &[f32], d: f32, c: u8) -> (f32, u8) {
    if d == 0.0 {
        return (x.iter().map(|v| v * v).sum(), 0);
    }
    let (inv, off) = (1.0 / d, c as f32 / 16.0);
    let (mut err, mut resid) = ([0f32; 8], [0f32; 8]);
    let mut lane = |l: usize, v: f32| {
        let q = code(v, inv, off);
        let e = v - d * (q - off);
        err[l] += e * e;
        resid[l] += q - v * inv;
    };
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (l, &v) in ch.iter().enumerate() {
            lane(l, v);
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        lane(l, v);
    }
    let better = (resid.iter().sum::<f32>() / x.len() as f32 * 16.0)
        .round()
        .clamp(0.0, 255.0) as u8;
    (err.iter().sum(), better)
}

/// Quantizes one block of values into `quants` (two codes per byte, any extra nibbles zeroed)
/// and returns the header bytes `[k, c]`.
pub fn quantize_block(x: &[f32], quants: &mut [u8], stats: &mut BlockStats) -> Result<[u8; 2]> {
    debug_assert!(2 * quants.len() >= x.len());
    // The grid always reaches zero from one side (c >= 0), so span at least [min(x,0), max(x,0)].
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(0f32, |m, &v| m.max(v));
    let mut best = (f32::INFINITY, 0u8, 0u8);
    // Neighbouring tries often land on the same (scale, offset) codes: fit each pair once.
    let mut tried: Vec<(u8, u8)> = Vec::with_capacity(TRIES * 9);
    if hi > lo {
        for t in 0..TRIES {
            let s = 1.0 - 0.025 * t as f32;
            let k0 = nearest_code((hi - lo) * s / 15.0)?;
            for k in [k0.saturating_sub(1), k0, k0.saturating_add(1)] {
                let d = scale(k);
                let mut c = if d > 0.0 {
                    (-lo * s / d * 16.0).round().clamp(0.0, 255.0) as u8
                } else {
                    0
                };
                // Fit, then move the offset to the codes' mean residual, up to three times.
                for _ in 0..3 {
                    if tried.contains(&(k, c)) {
                        break;
                    }
                    tried.push((k, c));
                    let (err, refined) = fit(x, d, c);
                    if err < best.0 {
                        best = (err, k, c);
                    }
                    c = refined;
                }
            }
        }
    }
    let (_, k, c) = best;
    let d = scale(k);
    let (inv, off) = (if d > 0.0 { 1.0 / d } else { 0.0 }, c as f32 / 16.0);
    quants.fill(0);
    for (i, &v) in x.iter().enumerate() {
        let q = if d > 0.0 { code(v, inv, off) } else { 0.0 };
        quants[i / 2] |= (q as u8) << (4 * (i % 2));
        stats.add(v, d * (q - off));
    }
    Ok([k, c])
}

/// Writes the `out.len()` values of one block.
#[inline]
pub fn dequantize_block(quants: &[u8], header: [u8; 2], out: &mut [f32]) {
    let d = scale(header[0]);
    let off = header[1] as f32 / 16.0;
    // Two values per byte; whole pairs first (the common full block vectorises), then an odd
    // last value.
    let last_byte = out.len() / 2;
    let mut pairs = out.chunks_exact_mut(2);
    for (o, &byte) in (&mut pairs).zip(quants) {
        o[0] = d * ((byte & 15) as f32 - off);
        o[1] = d * ((byte >> 4) as f32 - off);
    }
    if let [last] = pairs.into_remainder() {
        *last = d * ((quants[last_byte] & 15) as f32 - off);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scale_code_is_its_own_nearest() {
        assert_eq!(scale(0), 0.0);
        assert_eq!(scale(1), 2f32.powi(-20) * 1.125);
        assert_eq!(scale(255), 2f32.powi(11) * 1.875);
        for k in 1..=255u8 {
            let d = scale(k);
            assert_eq!(
                d,
                2f32.powi((k >> 3) as i32 - 20) * (1.0 + (k & 7) as f32 / 8.0)
            );
            assert_eq!(nearest_code(d).unwrap(), k, "code {k}");
        }
        assert!(nearest_code(1e6).is_err());
        assert_eq!(nearest_code(1e-30).unwrap(), 0);
    }

    #[test]
    fn a_block_has_the_documented_bytes() {
        // Values exactly on the grid d = 0.125 (k = 17 << 3), offset 8 steps (c = 128).
        let d = 0.125f32;
        let k = 17u8 << 3;
        assert_eq!(scale(k), d);
        let x: Vec<f32> = (0..32).map(|i| d * ((i % 16) as f32 - 8.0)).collect();
        let mut q = [0u8; 16];
        let mut st = BlockStats::default();
        let h = quantize_block(&x, &mut q, &mut st).unwrap();
        assert_eq!(h, [k, 128]);
        assert_eq!(st.err, 0.0);
        // Element 2i in the low nibble, 2i+1 in the high nibble.
        assert_eq!(q[0], 0x10);
        assert_eq!(q[7], 0xfe);
        let mut back = [0f32; 32];
        dequantize_block(&q, h, &mut back);
        assert_eq!(back.to_vec(), x);
    }

    #[test]
    fn all_positive_all_negative_and_zero_blocks() {
        let mut q = [0u8; 16];
        for x in [
            vec![1.0f32, 2.0, 3.0],
            vec![-1.0, -2.0, -3.5],
            vec![0.0; 32],
            vec![0.7; 5],
        ] {
            let mut st = BlockStats::default();
            let h = quantize_block(&x, &mut q, &mut st).unwrap();
            let mut back = vec![0f32; x.len()];
            dequantize_block(&q, h, &mut back);
            for (a, b) in x.iter().zip(&back) {
                assert!(
                    (a - b).abs() <= 0.1 * a.abs().max(1e-6),
                    "{x:?} -> {back:?}"
                );
            }
        }
    }
}

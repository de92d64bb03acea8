//! `q8_0`: blocks of 32 signed bytes with one f16 scale (8.5 bits per weight), the same numbers
//! as llama.cpp's Q8_0 (laid out in planes, see [`super`]).
//!
//! # Byte layout of a `[rows, cols]` tensor (the contract for every kernel)
//!
//! `nb` = [`blocks_per_row`]`(cols)` = `max(1, cols / 32)` blocks per row; block `(r, b)` covers
//! columns `32b .. 32b + 32` of row `r`, except the last, which runs to `cols` (32 to 63
//! columns, or `cols` when that is under 32). Its index is `blk = r * nb + b`. All numbers are
//! little-endian.
//!
//! ```text
//! offset 0                 quants: rows * cols bytes, i8; column c of row r is byte r * cols + c
//!                          (when cols % 32 == 0, as u32 words: word blk * 8 + i / 4, bits
//!                          8 * (i % 4), for column 32b + i)
//! offset rows * cols       scales: rows * nb f16; block blk's scale d is bytes
//!                          [rows*cols + 2*blk, +2)
//! total                    rows * (cols + 2 * nb) bytes
//! ```
//!
//! Value: `w = f32(d) * f32(q)` (one f32 rounding). GPU kernels read the 32-column shape of
//! [`Packed::padded`](super::Packed::padded), which is these bytes when `cols % 32 == 0`.
//!
//! Quantization (per block): `amax = max |x|`, `d = f16(amax / 127)`, `q = clamp(round(x / d),
//! -127, 127)` with the stored (rounded) `d`.

#[cfg(doc)]
use super::blocks_per_row;
use super::BlockStats;
#[cfg(test)]
use super::BLOCK;
use crate::error::{Error, Result};
use half::f16;

/// Quantizes one block of values into `quants` (one byte per value, any extra bytes zeroed)
/// and returns the scale's bytes.
pub fn quantize_block(x: &[f32], quants: &mut [u8], stats: &mut BlockStats) -> Result<[u8; 2]> {
    debug_assert!(quants.len() >= x.len());
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0);
    if !d.is_finite() {
        return Err(Error::Invalid(format!(
            "a block's largest value {amax} is beyond q8_0's range (f16 scale)"
        )));
    }
    let df = d.to_f32();
    let inv = if df > 0.0 { 1.0 / df } else { 0.0 };
    quants.fill(0);
    for (o, &v) in quants.iter_mut().zip(x) {
        let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
        *o = q as u8;
        stats.add(v, df * q as f32);
    }
    Ok(d.to_bits().to_le_bytes())
}

/// Writes the `out.len()` values of one block.
#[inline]
pub fn dequantize_block(quants: &[u8], scale: [u8; 2], out: &mut [f32]) {
    let d = f16::from_bits(u16::from_le_bytes(scale)).to_f32();
    for (o, &q) in out.iter_mut().zip(quants) {
        *o = d * (q as i8) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_has_the_documented_bytes() {
        let mut x = [0f32; BLOCK];
        x[0] = 1.27;
        x[1] = -0.5;
        x[31] = 0.01;
        let mut q = [0u8; 32];
        let mut st = BlockStats::default();
        let s = quantize_block(&x, &mut q, &mut st).unwrap();
        let d = f16::from_f32(0.01);
        assert_eq!(s, d.to_bits().to_le_bytes());
        assert_eq!(q[0] as i8, 127);
        assert_eq!(q[1] as i8, (-0.5 / d.to_f32()).round() as i8);
        assert_eq!(q[31] as i8, 1);
        let mut back = [0f32; BLOCK];
        dequantize_block(&q, s, &mut back);
        assert_eq!(back[0], d.to_f32() * 127.0);
        assert_eq!(back[2], 0.0);
    }

    #[test]
    fn short_blocks_are_zero_padded() {
        let x = [0.5f32, -0.25, 0.125];
        let mut q = [0xffu8; 32];
        let mut st = BlockStats::default();
        quantize_block(&x, &mut q, &mut st).unwrap();
        assert!(q[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_range_values_are_an_error() {
        let mut q = [0u8; 32];
        let mut st = BlockStats::default();
        assert!(quantize_block(&[1e12], &mut q, &mut st).is_err());
    }
}

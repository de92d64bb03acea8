//! Quantized weight formats: `q8_0` (8.5 bits per weight) and `q4` (4.5 bits per weight).
//!
//! Both cut each row of a `[rows, cols]` matrix into blocks of [`BLOCK`] columns (the last block
//! of a row is zero-padded when `cols` is not a multiple of 32) and quantize rows independently.
//! A tensor is stored in two planes: first every block's codes, then every block's 2-byte
//! scale/header, both in block order `r * nb + b`. Planes keep the codes 4-byte aligned, so GPU
//! kernels read them as u32 words, and a range of rows is a contiguous slice of each plane.
//! The exact layouts are written next to each format: [`q8_0`], [`q4`].
//!
//! In safetensors files a quantized tensor is a `U8` tensor of its packed bytes; the file's
//! `__metadata__` maps `unmask.quant.<name>` to `{"format": "q4", "shape": [rows, cols]}`.

mod dir;
pub mod memory;
pub mod meta;
pub mod q4;
pub mod q8_0;
mod store;

pub use dir::{quantize_dir, DirReport, DEFAULT_SHARD_BYTES};
pub use store::{quantize_tensor, quantize_weights, QuantPlan, TensorReport};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Columns per block, for every format.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuantFormat {
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4")]
    Q4,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 2] = [QuantFormat::Q8_0, QuantFormat::Q4];

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "q8_0" => Ok(QuantFormat::Q8_0),
            "q4" => Ok(QuantFormat::Q4),
            other => Err(Error::Invalid(format!(
                "unknown quantization format `{other}` (q8_0, q4)"
            ))),
        }
    }

    /// Bytes of one block's codes (first plane) and of its scale/header (second plane).
    pub fn block_bytes(self) -> (usize, usize) {
        match self {
            QuantFormat::Q8_0 => (q8_0::QUANT_BYTES, q8_0::SCALE_BYTES),
            QuantFormat::Q4 => (q4::QUANT_BYTES, q4::SCALE_BYTES),
        }
    }

    /// Bits per weight for full blocks.
    pub fn bits_per_weight(self) -> f64 {
        let (q, s) = self.block_bytes();
        8.0 * (q + s) as f64 / BLOCK as f64
    }

    /// Bytes of a `[rows, cols]` tensor.
    pub fn bytes_for(self, rows: usize, cols: usize) -> usize {
        let (q, s) = self.block_bytes();
        rows * cols.div_ceil(BLOCK) * (q + s)
    }

    fn quantize_block(self, x: &[f32], codes: &mut [u8], st: &mut BlockStats) -> Result<[u8; 2]> {
        match self {
            QuantFormat::Q8_0 => q8_0::quantize_block(x, codes, st),
            QuantFormat::Q4 => q4::quantize_block(x, codes, st),
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Squared error and squared magnitude of quantized values, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct BlockStats {
    pub err: f64,
    pub norm: f64,
}

impl BlockStats {
    #[inline]
    pub fn add(&mut self, x: f32, xhat: f32) {
        let e = (x - xhat) as f64;
        self.err += e * e;
        self.norm += (x as f64) * (x as f64);
    }

    pub fn merge(&mut self, o: BlockStats) {
        self.err += o.err;
        self.norm += o.norm;
    }

    /// ‖W − Ŵ‖ / ‖W‖ (0 for an all-zero tensor).
    pub fn rel_rmse(&self) -> f64 {
        if self.norm > 0.0 {
            (self.err / self.norm).sqrt()
        } else {
            0.0
        }
    }
}

/// The packed bytes of a `[rows, cols]` tensor, split into its two planes.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    /// Blocks per row.
    pub nb: usize,
    pub codes: &'a [u8],
    pub scales: &'a [u8],
}

impl<'a> Packed<'a> {
    pub fn new(format: QuantFormat, rows: usize, cols: usize, bytes: &'a [u8]) -> Result<Self> {
        let want = format.bytes_for(rows, cols);
        if bytes.len() != want {
            return Err(Error::Weights(format!(
                "{} bytes do not hold a {format} [{rows}, {cols}] tensor ({want} bytes)",
                bytes.len()
            )));
        }
        let nb = cols.div_ceil(BLOCK);
        let (codes, scales) = bytes.split_at(rows * nb * format.block_bytes().0);
        Ok(Packed {
            format,
            rows,
            cols,
            nb,
            codes,
            scales,
        })
    }

    /// Dequantizes row `r` into `out` (`cols` long), block by block.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let (qb, sb) = self.format.block_bytes();
        for (b, chunk) in out[..self.cols].chunks_mut(BLOCK).enumerate() {
            let blk = r * self.nb + b;
            let codes = &self.codes[blk * qb..(blk + 1) * qb];
            let s = [self.scales[blk * sb], self.scales[blk * sb + 1]];
            match self.format {
                QuantFormat::Q8_0 => q8_0::dequantize_block(codes, s, chunk),
                QuantFormat::Q4 => q4::dequantize_block(codes, s, chunk),
            }
        }
    }

    /// The whole tensor as f32 (tests and tools; kernels dequantize per block or per row).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_mut(self.cols).enumerate() {
                self.row_into(r, row);
            }
        }
        out
    }
}

/// Quantizes `rows` rows into the two planes of a packed tensor. `row(r, out)` writes row `r`
/// as f32; rows are quantized independently (in parallel where the tensor is large).
pub fn quantize_rows(
    format: QuantFormat,
    rows: usize,
    cols: usize,
    row: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> Result<(Vec<u8>, BlockStats)> {
    let nb = cols.div_ceil(BLOCK);
    let (qb, sb) = format.block_bytes();
    let parts = crate::reference::parallel::map_chunks(rows, rows * cols * 64, |range| {
        let mut codes = vec![0u8; range.len() * nb * qb];
        let mut scales = vec![0u8; range.len() * nb * sb];
        let mut x = vec![0f32; cols];
        let mut st = BlockStats::default();
        for (i, r) in range.enumerate() {
            row(r, &mut x);
            if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!(
                    "row {r} holds the non-finite value {} at column {bad}",
                    x[bad]
                )));
            }
            for (b, chunk) in x.chunks(BLOCK).enumerate() {
                let blk = i * nb + b;
                let s =
                    format.quantize_block(chunk, &mut codes[blk * qb..(blk + 1) * qb], &mut st)?;
                scales[blk * sb..(blk + 1) * sb].copy_from_slice(&s);
            }
        }
        Ok((codes, scales, st))
    });
    let mut codes = Vec::with_capacity(format.bytes_for(rows, cols));
    let mut scales = Vec::with_capacity(rows * nb * sb);
    let mut stats = BlockStats::default();
    for part in parts {
        let (c, s, st) = part?;
        codes.extend_from_slice(&c);
        scales.extend_from_slice(&s);
        stats.merge(st);
    }
    codes.extend_from_slice(&scales);
    Ok((codes, stats))
}

/// Quantizes a row-major `[rows, cols]` f32 matrix.
pub fn quantize(
    format: QuantFormat,
    rows: usize,
    cols: usize,
    values: &[f32],
) -> Result<(Vec<u8>, BlockStats)> {
    if values.len() != rows * cols {
        return Err(Error::Invalid(format!(
            "{} values do not make a [{rows}, {cols}] matrix",
            values.len()
        )));
    }
    quantize_rows(format, rows, cols, &|r, out| {
        out.copy_from_slice(&values[r * cols..(r + 1) * cols])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SplitMix;

    /// Standard normal samples (Box-Muller), so the accuracy bounds refer to true Gaussians.
    fn gaussian(n: usize, std: f32, seed: u64) -> Vec<f32> {
        let mut r = SplitMix(seed);
        let mut u = || ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (0..n)
            .map(|_| {
                let (a, b) = (u(), u());
                ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32 * std
            })
            .collect()
    }

    /// llama.cpp's Q4_0 (signed max / -8, f16 scale), the yardstick q4 must beat.
    fn q4_0_rel_rmse(x: &[f32]) -> f64 {
        let mut st = BlockStats::default();
        for b in x.chunks(BLOCK) {
            let m = b
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = half::f16::from_f32(m / -8.0).to_f32();
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            for &v in b {
                let q = (v * inv + 8.5).floor().clamp(0.0, 15.0);
                st.add(v, (q - 8.0) * d);
            }
        }
        st.rel_rmse()
    }

    #[test]
    fn gaussian_accuracy_and_size() {
        let (rows, cols) = (256, 1024);
        let w = gaussian(rows * cols, 0.02, 7);
        let q4_0 = q4_0_rel_rmse(&w);
        for f in QuantFormat::ALL {
            let (bytes, st) = quantize(f, rows, cols, &w).unwrap();
            let bits = 8.0 * bytes.len() as f64 / (rows * cols) as f64;
            // The stats the quantizer reports are the error of what a kernel reads back.
            let back = Packed::new(f, rows, cols, &bytes).unwrap().to_f32();
            let mut check = BlockStats::default();
            for (a, b) in w.iter().zip(&back) {
                check.add(*a, *b);
            }
            assert!((check.rel_rmse() - st.rel_rmse()).abs() < 1e-9);
            println!(
                "{f}: {bits} bits/weight, rel_rmse {:.4} (Q4_0 {q4_0:.4})",
                st.rel_rmse()
            );
            match f {
                QuantFormat::Q8_0 => {
                    assert_eq!(bits, 8.5);
                    assert!(st.rel_rmse() <= 0.006);
                }
                QuantFormat::Q4 => {
                    assert_eq!(bits, 4.5);
                    assert!(st.rel_rmse() <= 0.080);
                    assert!(
                        st.rel_rmse() < q4_0 - 0.01,
                        "{} vs Q4_0 {q4_0}",
                        st.rel_rmse()
                    );
                }
            }
        }
        assert!((0.084..0.088).contains(&q4_0), "Q4_0 yardstick {q4_0}");
    }

    #[test]
    fn planes_and_padding_round_trip() {
        // 48 columns: one full block and a half-filled one per row.
        let (rows, cols) = (3, 48);
        let w = gaussian(rows * cols, 1.0, 3);
        for f in QuantFormat::ALL {
            let (bytes, _) = quantize(f, rows, cols, &w).unwrap();
            assert_eq!(bytes.len(), f.bytes_for(rows, cols));
            let p = Packed::new(f, rows, cols, &bytes).unwrap();
            assert_eq!(p.nb, 2);
            // Row 1, block 1 is block index 3: its bytes are where the layout says.
            let (qb, sb) = f.block_bytes();
            let blk = 3;
            let mut want = vec![0f32; 16];
            let s = [p.scales[blk * sb], p.scales[blk * sb + 1]];
            match f {
                QuantFormat::Q8_0 => {
                    q8_0::dequantize_block(&bytes[blk * qb..(blk + 1) * qb], s, &mut want)
                }
                QuantFormat::Q4 => {
                    q4::dequantize_block(&bytes[blk * qb..(blk + 1) * qb], s, &mut want)
                }
            }
            let all = p.to_f32();
            assert_eq!(&all[cols + 32..2 * cols], &want[..]);
            // Padding codes are zero.
            let pad = &p.codes[blk * qb + qb / 2..(blk + 1) * qb];
            assert!(pad.iter().all(|&b| b == 0), "{f}");
            // q8_0 of q8_0 values is exact (the largest value maps back to 127 and the same d).
            if f == QuantFormat::Q8_0 {
                let (again, st) = quantize(f, rows, cols, &all).unwrap();
                assert_eq!(again, bytes);
                assert_eq!(st.err, 0.0);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(quantize(QuantFormat::Q4, 2, 2, &[1.0, f32::NAN, 0.0, 0.0]).is_err());
        assert!(quantize(QuantFormat::Q8_0, 1, 2, &[f32::INFINITY, 0.0]).is_err());
        assert!(quantize(QuantFormat::Q8_0, 2, 2, &[1.0]).is_err());
        assert!(Packed::new(QuantFormat::Q4, 2, 32, &[0u8; 35]).is_err());
        assert!(QuantFormat::parse("q3").is_err());
    }
}

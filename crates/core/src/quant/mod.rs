//! Quantized weight formats: `q8_0` (8.5 bits per weight) and `q4` (4.5 bits per weight).
//!
//! Both cut each row of a `[rows, cols]` matrix into blocks of [`BLOCK`] columns and quantize
//! rows independently. When `cols` is not a multiple of 32 the row's last block absorbs the
//! leftover columns (a 48-column row is one block of 48; 80 columns are blocks of 32 and 48), so
//! no bits are spent on padding: see [`blocks_per_row`] and [`block_columns`].
//! A tensor is stored in two planes: first every row's codes (row `r` at `r * code_bytes(cols)`,
//! column order), then every block's 2-byte scale/header in block order `r * nb + b`. A range of
//! rows is a contiguous slice of each plane. The exact layouts are written next to each format:
//! [`q8_0`], [`q4`].
//!
//! GPU kernels read blocks of exactly 32 columns as u32 words: [`Packed::padded`] gives the
//! same numbers in that shape (each row cut at every 32 columns, the last piece zero-padded,
//! every piece carrying its block's scale). For rows that are whole blocks (every published
//! LLaDA2 matrix) it is the stored bytes themselves.
//!
//! In safetensors files a quantized tensor is a `U8` tensor of its packed bytes; the file's
//! `__metadata__` maps `unmask.quant.<name>` to `{"format": "q4", "shape": [rows, cols]}`.

mod dir;
pub mod memory;
pub mod meta;
pub mod q4;
pub mod q8_0;
mod store;

pub use dir::{quantize_dir, quantize_dir_cancellable, DirReport, DEFAULT_SHARD_BYTES};
pub use store::{quantize_tensor, quantize_weights, QuantPlan, TensorReport};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::ops::Range;

/// Columns per block, for every format (a row's last block may hold up to `2 * BLOCK - 1`).
pub const BLOCK: usize = 32;

/// Bytes of one block's scale/header, for every format.
pub const SCALE_BYTES: usize = 2;

/// Blocks per row of `cols` columns: `cols / 32`, at least one (none for an empty row).
pub fn blocks_per_row(cols: usize) -> usize {
    if cols < BLOCK {
        (cols > 0) as usize
    } else {
        cols / BLOCK
    }
}

/// The columns block `b` of a row covers: 32 of them, except the last block, which runs to the
/// end of the row.
pub fn block_columns(cols: usize, b: usize) -> Range<usize> {
    let start = b * BLOCK;
    if b + 1 >= blocks_per_row(cols) {
        start..cols
    } else {
        start..start + BLOCK
    }
}

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

    /// Bytes of the codes of `n` consecutive columns starting on a block boundary.
    pub fn code_bytes(self, n: usize) -> usize {
        match self {
            QuantFormat::Q8_0 => n,
            QuantFormat::Q4 => n.div_ceil(2),
        }
    }

    /// Bits per weight for rows of whole 32-column blocks.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * (self.code_bytes(BLOCK) + SCALE_BYTES) as f64 / BLOCK as f64
    }

    /// Bytes of a `[rows, cols]` tensor.
    pub fn bytes_for(self, rows: usize, cols: usize) -> usize {
        rows * (self.code_bytes(cols) + blocks_per_row(cols) * SCALE_BYTES)
    }

    /// Bytes of a `[rows, cols]` tensor in the 32-column block shape of [`Packed::padded`].
    pub fn padded_bytes_for(self, rows: usize, cols: usize) -> usize {
        rows * cols.div_ceil(BLOCK) * (self.code_bytes(BLOCK) + SCALE_BYTES)
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
    /// Blocks per row ([`blocks_per_row`]).
    pub nb: usize,
    /// Code bytes per row.
    pub row_code_bytes: usize,
    pub codes: &'a [u8],
    pub scales: &'a [u8],
    bytes: &'a [u8],
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
        let row_code_bytes = format.code_bytes(cols);
        let (codes, scales) = bytes.split_at(rows * row_code_bytes);
        Ok(Packed {
            format,
            rows,
            cols,
            nb: blocks_per_row(cols),
            row_code_bytes,
            codes,
            scales,
            bytes,
        })
    }

    /// Block `b` of row `r`: its codes and its scale/header.
    #[inline]
    fn block(&self, r: usize, b: usize) -> (&'a [u8], [u8; 2]) {
        let span = block_columns(self.cols, b);
        let c0 = r * self.row_code_bytes + self.format.code_bytes(span.start);
        let codes = &self.codes[c0..c0 + self.format.code_bytes(span.len())];
        let s = (r * self.nb + b) * SCALE_BYTES;
        (codes, [self.scales[s], self.scales[s + 1]])
    }

    /// Dequantizes row `r` into `out` (`cols` long), block by block.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        for b in 0..self.nb {
            let (codes, s) = self.block(r, b);
            let chunk = &mut out[block_columns(self.cols, b)];
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

    /// Piece `j` of row `r` in the 32-column block shape of [`Packed::padded`]: columns
    /// `32j .. 32j + 32` (zero codes past the row's end) and the header of the block holding
    /// them. Only the first `format.code_bytes(32)` bytes of the codes are used.
    #[inline]
    pub fn piece(&self, r: usize, j: usize) -> ([u8; BLOCK], [u8; 2]) {
        let n = BLOCK.min(self.cols - j * BLOCK);
        let from = r * self.row_code_bytes + self.format.code_bytes(j * BLOCK);
        let len = self.format.code_bytes(n);
        let mut codes = [0u8; BLOCK];
        codes[..len].copy_from_slice(&self.codes[from..from + len]);
        let s = (r * self.nb + j.min(self.nb - 1)) * SCALE_BYTES;
        (codes, [self.scales[s], self.scales[s + 1]])
    }

    /// The same values as blocks of exactly 32 columns, for kernels that read whole blocks:
    /// `ceil(cols / 32)` blocks per row, codes plane then scale plane (block `r * nbp + j`), a
    /// row's last piece zero-padded. A last block wider than 32 becomes two pieces with the
    /// same scale/header, so every value decodes to the same f32. Borrowed when `cols` is a
    /// multiple of 32 (then the stored layout already is this one).
    pub fn padded(&self) -> Cow<'a, [u8]> {
        if self.cols.is_multiple_of(BLOCK) {
            return Cow::Borrowed(self.bytes);
        }
        let nbp = self.cols.div_ceil(BLOCK);
        let qb = self.format.code_bytes(BLOCK);
        let mut codes = Vec::with_capacity(self.format.padded_bytes_for(self.rows, self.cols));
        let mut scales = Vec::with_capacity(self.rows * nbp * SCALE_BYTES);
        for r in 0..self.rows {
            for j in 0..nbp {
                let (c, s) = self.piece(r, j);
                codes.extend_from_slice(&c[..qb]);
                scales.extend_from_slice(&s);
            }
        }
        codes.extend_from_slice(&scales);
        Cow::Owned(codes)
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
    let nb = blocks_per_row(cols);
    let rb = format.code_bytes(cols);
    let parts = crate::reference::parallel::map_chunks(rows, rows * cols * 64, |range| {
        let mut codes = vec![0u8; range.len() * rb];
        let mut scales = vec![0u8; range.len() * nb * SCALE_BYTES];
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
            let row_codes = &mut codes[i * rb..(i + 1) * rb];
            for b in 0..nb {
                let span = block_columns(cols, b);
                let c0 = format.code_bytes(span.start);
                let c1 = c0 + format.code_bytes(span.len());
                let s = format.quantize_block(&x[span], &mut row_codes[c0..c1], &mut st)?;
                let blk = i * nb + b;
                scales[blk * SCALE_BYTES..(blk + 1) * SCALE_BYTES].copy_from_slice(&s);
            }
        }
        Ok((codes, scales, st))
    });
    let mut codes = Vec::with_capacity(format.bytes_for(rows, cols));
    let mut scales = Vec::with_capacity(rows * nb * SCALE_BYTES);
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
    fn last_blocks_absorb_the_leftover_columns() {
        assert_eq!(
            (blocks_per_row(0), blocks_per_row(20), blocks_per_row(48)),
            (0, 1, 1)
        );
        assert_eq!((blocks_per_row(64), blocks_per_row(80)), (2, 2));
        assert_eq!(block_columns(80, 0), 0..32);
        assert_eq!(block_columns(80, 1), 32..80);
        assert_eq!(block_columns(20, 0), 0..20);
        for f in QuantFormat::ALL {
            // 48 columns are one block: fewer bits than two padded blocks, and than 32 columns.
            assert!(8.0 * f.bytes_for(1, 48) as f64 / 48.0 < f.bits_per_weight());
            assert_eq!(f.bytes_for(3, 64), f.padded_bytes_for(3, 64));
        }
    }

    #[test]
    fn planes_round_trip_and_pad_to_whole_blocks() {
        for (rows, cols) in [(3, 48), (2, 80), (3, 33), (2, 20), (2, 64)] {
            let w = gaussian(rows * cols, 1.0, 3);
            for f in QuantFormat::ALL {
                let (bytes, st) = quantize(f, rows, cols, &w).unwrap();
                assert_eq!(bytes.len(), f.bytes_for(rows, cols));
                let p = Packed::new(f, rows, cols, &bytes).unwrap();
                let all = p.to_f32();
                // Row 1's last block sits where the layout says: its codes at the row's code
                // offset plus its first column's, its header at index 1 * nb + nb - 1.
                let b = p.nb - 1;
                let span = block_columns(cols, b);
                let c0 = p.row_code_bytes + f.code_bytes(span.start);
                let codes = &bytes[c0..c0 + f.code_bytes(span.len())];
                let h = rows * p.row_code_bytes + (p.nb + b) * SCALE_BYTES;
                let s = [bytes[h], bytes[h + 1]];
                let mut want = vec![0f32; span.len()];
                match f {
                    QuantFormat::Q8_0 => q8_0::dequantize_block(codes, s, &mut want),
                    QuantFormat::Q4 => q4::dequantize_block(codes, s, &mut want),
                }
                assert_eq!(&all[cols + span.start..2 * cols], &want[..], "{f} {cols}");
                // The quantizer's error is the error of what is read back.
                let mut check = BlockStats::default();
                for (a, b) in w.iter().zip(&all) {
                    check.add(*a, *b);
                }
                assert!((check.rel_rmse() - st.rel_rmse()).abs() < 1e-9);
                // The padded view holds the same values in 32-column blocks, padding zeroed.
                let padded = p.padded();
                let wide = cols.div_ceil(BLOCK) * BLOCK;
                assert_eq!(padded.len(), f.padded_bytes_for(rows, cols));
                let pp = Packed::new(f, rows, wide, &padded).unwrap();
                let back = pp.to_f32();
                for r in 0..rows {
                    assert_eq!(
                        &back[r * wide..r * wide + cols],
                        &all[r * cols..(r + 1) * cols]
                    );
                }
                if cols % BLOCK != 0 {
                    let pad = f.code_bytes(cols % BLOCK)..f.code_bytes(BLOCK);
                    let last = (pp.nb - 1) * f.code_bytes(BLOCK);
                    assert!(pp.codes[last..][pad].iter().all(|&c| c == 0), "{f} {cols}");
                }
                // q8_0 of q8_0 values is exact (the largest value maps back to 127 and the same d).
                if f == QuantFormat::Q8_0 {
                    let (again, st) = quantize(f, rows, cols, &all).unwrap();
                    assert_eq!(again, bytes);
                    assert_eq!(st.err, 0.0);
                }
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

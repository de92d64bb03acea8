//! q8_0 / q4 matrices times activations quantized to 8 bits (llama.cpp's approach): each token
//! row is cut into blocks of 32 values, each block stored as 32 signed bytes and an f32 scale
//! (`amax / 127`), and a weight block's dot product with it is an integer sum of byte products
//! scaled once per block. It is faster than widening the weights to f32, and not bit for bit
//! the f32 result (the activations are rounded to 8 bits): `--backend cpu --int8-dots` chooses
//! it; the default f32 path stays exact.
//!
//! Weight blocks (quant/q8_0.rs, quant/q4.rs):
//! - q8_0: `w = d * q`, so a block adds `d * dx * sum(q * qx)`;
//! - q4: `w = (d / 16) * (16 q - c)` with 4-bit codes, so a block adds
//!   `(d / 16) * dx * (16 * sum(q * qx) - c * sum(qx))`. Its codes are packed two per byte,
//!   even columns in the low nibbles, so the activations of a q4 product are stored with each
//!   block's even columns first and its odd columns after: the low nibbles of the 16 code bytes
//!   meet the first 16 activation bytes, the high nibbles the last 16.
//!
//! Only matrices whose rows are whole blocks (`cols % 32 == 0`, every LLaDA2 matrix) take this
//! path; the others keep the f32 one.

use super::super::matrix::Matrix;
use crate::quant::{q4, Packed, QuantFormat, BLOCK};

/// Token rows quantized per block of 32 for one weight format's layout.
pub struct QuantizedRows {
    k: usize,
    nb: usize,
    q: Vec<i8>,
    /// Per (token, block): the scale `dx`, the sum of its bytes, and `dx` times that sum
    /// (q4's offset term).
    d: Vec<f32>,
    sums: Vec<i32>,
    // Read by the AVX2 tiles only (the portable loop adds the offset term its own way).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    dsums: Vec<f32>,
}

/// Quantizes `x` (`[n, k]`, `k` a multiple of 32) per block for a product with `format`.
pub fn quantize(x: &[f32], k: usize, format: QuantFormat) -> QuantizedRows {
    let nb = k / BLOCK;
    let blocks = x.len() / BLOCK;
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; blocks];
    let mut sums = vec![0i32; blocks];
    for (i, block) in x.chunks_exact(BLOCK).enumerate() {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let out = &mut q[i * BLOCK..(i + 1) * BLOCK];
        let mut sum = 0i32;
        for (j, &v) in block.iter().enumerate() {
            let b = (v * inv).round().clamp(-127.0, 127.0) as i8;
            sum += b as i32;
            // q4: even columns first, then odd ones (see the module comment).
            let at = match format {
                QuantFormat::Q8_0 => j,
                QuantFormat::Q4 => j / 2 + (j % 2) * (BLOCK / 2),
            };
            out[at] = b;
        }
        d[i] = scale;
        sums[i] = sum;
    }
    let dsums = d.iter().zip(&sums).map(|(d, s)| d * *s as f32).collect();
    QuantizedRows {
        k,
        nb,
        q,
        d,
        sums,
        dsums,
    }
}

impl QuantizedRows {
    /// Token `t`'s bytes, block scales and block sums.
    fn token(&self, t: usize) -> (&[i8], &[f32], &[i32]) {
        (
            &self.q[t * self.k..(t + 1) * self.k],
            &self.d[t * self.nb..(t + 1) * self.nb],
            &self.sums[t * self.nb..(t + 1) * self.nb],
        )
    }
}

/// A weight row's block scales as f32, decoded once per row for every token.
struct RowScales {
    /// q8_0: `d`; q4: `d / 16`.
    d: Vec<f32>,
    /// q4: the offset `c` per block (0 for q8_0).
    c: Vec<f32>,
    /// q4: `d / 16 * c` per block.
    dc: Vec<f32>,
}

fn row_scales(p: &Packed, r: usize, s: &mut RowScales) {
    s.d.clear();
    s.c.clear();
    s.dc.clear();
    for b in 0..p.nb {
        let at = (r * p.nb + b) * 2;
        let (lo, hi) = (p.scales[at], p.scales[at + 1]);
        match p.format {
            QuantFormat::Q8_0 => {
                s.d.push(half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32());
                s.c.push(0.0);
            }
            QuantFormat::Q4 => {
                s.d.push(q4::scale(lo) / 16.0);
                s.c.push(hi as f32);
            }
        }
        s.dc.push(s.d[b] * s.c[b]);
    }
}

/// `out[n, m] = x[n, k] @ w^T` with `x` quantized per block, for a q8_0 / q4 `w` whose rows are
/// whole blocks; `None` for any other matrix (the caller takes the f32 path).
pub fn matmul(x: &[f32], w: &Matrix, out: &mut [f32]) -> Option<()> {
    let t = w.packed_tensor()?;
    let p = t.packed()?;
    let k = p.cols;
    if k == 0 || !k.is_multiple_of(BLOCK) {
        return None;
    }
    let n = x.len() / k;
    let qx = quantize(x, k, p.format);
    let dot = Dot::detect(p.format);
    super::super::ops::by_output_columns(n, p.rows, n * p.rows * k / 4, 16, out, |rows| {
        let width = rows.len();
        let mut part = vec![0f32; n * width];
        let mut s = RowScales {
            d: Vec::with_capacity(p.nb),
            c: Vec::with_capacity(p.nb),
            dc: Vec::with_capacity(p.nb),
        };
        for (j, r) in rows.enumerate() {
            row_scales(&p, r, &mut s);
            let codes = &p.codes[r * p.row_code_bytes..(r + 1) * p.row_code_bytes];
            // Tokens in tiles of TILE: each weight block is unpacked once per tile.
            let mut t = 0;
            while t < n {
                let count = TILE.min(n - t);
                let sums = dot.tile(codes, &s, &qx, t, count);
                for (i, v) in sums[..count].iter().enumerate() {
                    part[(t + i) * width + j] = *v;
                }
                t += count;
            }
        }
        part
    });
    Some(())
}

/// Token rows one weight row meets per pass over its blocks.
const TILE: usize = 4;

/// One weight row times quantized token rows, in the best instruction set here.
#[derive(Clone, Copy)]
enum Dot {
    Portable(QuantFormat),
    #[cfg(target_arch = "x86_64")]
    Avx2(QuantFormat),
}

impl Dot {
    fn detect(format: QuantFormat) -> Dot {
        #[cfg(target_arch = "x86_64")]
        if super::isa::avx2::detected() {
            return Dot::Avx2(format);
        }
        Dot::Portable(format)
    }

    /// The dots of the weight row with tokens `t .. t + count` (`count <= TILE`).
    #[inline]
    fn tile(
        self,
        codes: &[u8],
        s: &RowScales,
        qx: &QuantizedRows,
        t: usize,
        count: usize,
    ) -> [f32; TILE] {
        let mut out = [0f32; TILE];
        match self {
            Dot::Portable(f) => {
                for (i, o) in out[..count].iter_mut().enumerate() {
                    let (x, dx, sums) = qx.token(t + i);
                    *o = portable_row(f, codes, s, x, dx, sums);
                }
            }
            // SAFETY: detected on this machine; the rows hold nb whole blocks.
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2(f) => unsafe {
                if count == TILE {
                    out = avx2_tile::<TILE>(f, codes, s, qx, t);
                } else {
                    for (i, o) in out[..count].iter_mut().enumerate() {
                        *o = avx2_tile::<1>(f, codes, s, qx, t + i)[0];
                    }
                }
            },
        }
        out
    }
}

fn portable_row(
    f: QuantFormat,
    codes: &[u8],
    s: &RowScales,
    x: &[i8],
    dx: &[f32],
    sums: &[i32],
) -> f32 {
    let mut acc = 0f32;
    for b in 0..dx.len() {
        let xb = &x[b * BLOCK..(b + 1) * BLOCK];
        let scale = s.d[b] * dx[b];
        match f {
            QuantFormat::Q8_0 => {
                let wb = &codes[b * BLOCK..(b + 1) * BLOCK];
                let dot: i32 = wb
                    .iter()
                    .zip(xb)
                    .map(|(&w, &v)| (w as i8 as i32) * v as i32)
                    .sum();
                acc += scale * dot as f32;
            }
            QuantFormat::Q4 => {
                let wb = &codes[b * BLOCK / 2..(b + 1) * BLOCK / 2];
                let (even, odd) = xb.split_at(BLOCK / 2);
                let dot: i32 = wb
                    .iter()
                    .zip(even.iter().zip(odd))
                    .map(|(&c, (&e, &o))| (c & 15) as i32 * e as i32 + (c >> 4) as i32 * o as i32)
                    .sum();
                acc += scale * (16 * dot) as f32 - scale * s.c[b] * sums[b] as f32;
            }
        }
    }
    acc
}

/// Tokens `t .. t + T` against one weight row: each block's codes are loaded and unpacked once
/// for the `T` tokens.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_tile<const T: usize>(
    f: QuantFormat,
    codes: &[u8],
    s: &RowScales,
    qx: &QuantizedRows,
    t: usize,
) -> [f32; T] {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let low = _mm_set1_epi8(15);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut offset = [0f32; T];
    for b in 0..qx.nb {
        // q8_0: |w| and w's signs moved onto x (maddubs multiplies u8 by i8); q4: the low
        // nibbles (even columns) then the high ones (odd columns), as the activations are laid.
        let (w, signs) = match f {
            QuantFormat::Q8_0 => {
                let wv = _mm256_loadu_si256(codes.as_ptr().add(b * BLOCK) as *const __m256i);
                (_mm256_sign_epi8(wv, wv), Some(wv))
            }
            QuantFormat::Q4 => {
                let bytes = _mm_loadu_si128(codes.as_ptr().add(b * BLOCK / 2) as *const __m128i);
                let lo = _mm_and_si128(bytes, low);
                let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low);
                (_mm256_set_m128i(hi, lo), None)
            }
        };
        for (i, a) in acc.iter_mut().enumerate() {
            let tok = t + i;
            let xv =
                _mm256_loadu_si256(qx.q.as_ptr().add(tok * qx.k + b * BLOCK) as *const __m256i);
            let xv = match signs {
                Some(wv) => _mm256_sign_epi8(xv, wv),
                None => xv,
            };
            // u8 x i8 pairs summed to i16 (no saturation: at most 2 * 127 * 127), then to i32.
            let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones));
            // q4's factor 16 is in its row scales' use below, its offset term after the loop.
            let scale = s.d[b] * qx.d[tok * qx.nb + b];
            *a = _mm256_add_ps(*a, _mm256_mul_ps(_mm256_set1_ps(scale), dot));
        }
    }
    if f == QuantFormat::Q4 {
        for (i, o) in offset.iter_mut().enumerate() {
            let dsums = &qx.dsums[(t + i) * qx.nb..(t + i + 1) * qx.nb];
            *o = s.dc.iter().zip(dsums).map(|(a, b)| a * b).sum();
            acc[i] = _mm256_mul_ps(acc[i], _mm256_set1_ps(16.0));
        }
    }
    let mut out = [0f32; T];
    for i in 0..T {
        let a = acc[i];
        let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        out[i] = _mm_cvtss_f32(h) - offset[i];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{matrix, ramp};
    use super::*;
    use crate::weights::DType;

    #[test]
    fn int8_dots_are_close_to_f32_and_every_isa_agrees() {
        for dtype in [DType::Q8_0, DType::Q4] {
            for (n, m, k) in [(1, 3, 32), (5, 33, 64), (32, 70, 2048)] {
                let w = matrix(m, k, dtype, 11);
                let x = ramp(n * k);
                let mut want = vec![0f32; n * m];
                super::super::super::ops::matmul(&x, &w, &mut want);
                let mut got = vec![f32::NAN; n * m];
                matmul(&x, &w, &mut got).unwrap();
                // 8-bit activations: about 0.4 % of a block's largest value per value.
                let scale = (k as f32).sqrt();
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - r).abs() <= 0.02 * scale,
                        "{dtype:?} {n}x{m}x{k} [{i}]: {g} vs {r}"
                    );
                }
                // The portable loop gives the same sums (f32 order aside).
                let p = w.packed_tensor().unwrap().packed().unwrap();
                let qx = quantize(&x, k, p.format);
                let mut s = RowScales {
                    d: vec![],
                    c: vec![],
                    dc: vec![],
                };
                for r in 0..m {
                    row_scales(&p, r, &mut s);
                    let codes = &p.codes[r * p.row_code_bytes..(r + 1) * p.row_code_bytes];
                    for t in (0..n).step_by(TILE) {
                        let count = TILE.min(n - t);
                        let a = Dot::Portable(p.format).tile(codes, &s, &qx, t, count);
                        let b = Dot::detect(p.format).tile(codes, &s, &qx, t, count);
                        for (a, b) in a.iter().zip(&b) {
                            assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{dtype:?} {a} {b}");
                        }
                    }
                }
            }
        }
        // Rows that are not whole blocks, and f32 matrices, are not taken.
        let w = matrix(3, 40, DType::Q8_0, 1);
        assert!(matmul(&[0.0; 40], &w, &mut [0.0; 3]).is_none());
        let w = matrix(3, 32, DType::BF16, 1);
        assert!(matmul(&[0.0; 32], &w, &mut [0.0; 3]).is_none());
    }
}

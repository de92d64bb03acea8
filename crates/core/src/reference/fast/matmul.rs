//! `out[n, m] = x[n, k] @ w[m, k]^T` with AVX2 on x86_64 (F16C for f16), weights widened in
//! registers.
//!
//! The window's rows and the weight rows meet in register tiles of 4 tokens × 2 weight rows (8
//! accumulators of 8 lanes, 11 of the 16 vector registers), each weight vector widened once and
//! used for 4 tokens. Rows are taken in blocks of [`BLOCK`] that stay in L2 while every token
//! group passes over them, so each weight is read from memory once per window.
//!
//! Each dot product is the reference's (`ops::dot`) operation for operation: lane `l` sums the
//! products of the positions `l mod 8` with a multiply and an add (no fused multiply-add), the
//! lanes are added in its order, then the tail. So the results are bit for bit the reference's,
//! and the cpu backend is token-exact wherever the reference is.

use super::super::matrix::Matrix;

/// Weight rows per cache block (32 rows of 2048 bf16: 128 KiB).
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 32;
/// Tokens per register tile.
#[cfg(target_arch = "x86_64")]
const TOKENS: usize = 4;

/// Whether this machine runs the AVX2 kernels (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What the kernels are called, for the backend's name.
pub fn isa() -> &'static str {
    if available() {
        "avx2"
    } else {
        "portable"
    }
}

/// The fast matmul where the machine has one; `None` otherwise (the caller falls back to the
/// reference kernel).
pub fn matmul(x: &[f32], w: &Matrix, out: &mut [f32]) -> Option<()> {
    #[cfg(target_arch = "x86_64")]
    if available() {
        blocks(x, w, out);
        return Some(());
    }
    let _ = (x, w, out);
    None
}

/// The row blocks shared out over the pool, each block's tiles by the AVX2 kernel.
#[cfg(target_arch = "x86_64")]
fn blocks(x: &[f32], w: &Matrix, out: &mut [f32]) {
    use super::super::matrix::Weights;
    let (k, m) = (w.cols, w.rows);
    let n = x.len() / k.max(1);
    super::super::ops::by_output_columns(n, m, n * m * k, BLOCK, out, |rows| {
        let mut part = vec![0f32; n * rows.len()];
        // q8_0 / q4 rows are dequantized here, a block at a time (the reference's values).
        let mut scratch = match w.weights() {
            Weights::Packed => vec![0f32; BLOCK * k],
            _ => Vec::new(),
        };
        for b in rows.clone().step_by(BLOCK) {
            let block = b..(b + BLOCK).min(rows.end);
            // SAFETY: `available()` checked avx2 and f16c on this machine.
            unsafe {
                avx2::block(
                    x,
                    k,
                    w,
                    block,
                    rows.start,
                    rows.len(),
                    &mut part,
                    &mut scratch,
                )
            };
        }
        part
    });
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::super::matrix::{Matrix, Weights};
    use super::TOKENS;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Eight consecutive weights of one row as f32 lanes.
    trait Load {
        unsafe fn load8(row: &[Self], i: usize) -> __m256
        where
            Self: Sized;
        fn to_f32(v: Self) -> f32
        where
            Self: Sized;
    }

    impl Load for f32 {
        #[inline(always)]
        unsafe fn load8(row: &[f32], i: usize) -> __m256 {
            _mm256_loadu_ps(row.as_ptr().add(i))
        }
        fn to_f32(v: f32) -> f32 {
            v
        }
    }

    /// bf16 bits (as stored): the high half of an f32.
    #[derive(Clone, Copy)]
    struct Bf16(u16);
    /// IEEE half bits.
    #[derive(Clone, Copy)]
    struct F16(u16);

    impl Load for Bf16 {
        #[inline(always)]
        unsafe fn load8(row: &[Bf16], i: usize) -> __m256 {
            let h = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
        fn to_f32(v: Bf16) -> f32 {
            f32::from_bits((v.0 as u32) << 16)
        }
    }

    impl Load for F16 {
        #[inline(always)]
        unsafe fn load8(row: &[F16], i: usize) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(i) as *const __m128i))
        }
        fn to_f32(v: F16) -> f32 {
            half::f16::from_bits(v.0).to_f32()
        }
    }

    /// Rows `block` of `w` against every token of `x`, into `part` (`[n, width]`, its columns
    /// starting at weight row `first`). Packed rows go through `scratch` as f32.
    #[target_feature(enable = "avx2,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(
        x: &[f32],
        k: usize,
        w: &Matrix,
        block: Range<usize>,
        first: usize,
        width: usize,
        part: &mut [f32],
        scratch: &mut [f32],
    ) {
        let col = block.start - first;
        match w.weights() {
            Weights::F32(v) => rows(x, k, v, block, col, width, part),
            Weights::Bf16(v) => rows(x, k, cast::<Bf16>(v), block, col, width, part),
            Weights::F16(v) => rows(x, k, cast::<F16>(v), block, col, width, part),
            Weights::Packed => {
                for (i, r) in block.clone().enumerate() {
                    w.row_into(r, &mut scratch[i * k..(i + 1) * k]);
                }
                rows::<f32>(
                    x,
                    k,
                    &scratch[..block.len() * k],
                    0..block.len(),
                    col,
                    width,
                    part,
                )
            }
        }
    }

    /// The bits reinterpreted as the wrapper type (both are one u16).
    fn cast<T: Copy>(v: &[u16]) -> &[T] {
        assert_eq!(std::mem::size_of::<T>(), 2);
        // SAFETY: T is a #[derive(Clone, Copy)] newtype of u16: same size and alignment.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const T, v.len()) }
    }

    /// Rows `block` of `w` (row-major, `k` wide) into `part`'s columns from `col` on.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn rows<W: Load + Copy>(
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
            let tn = TOKENS.min(n - t);
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
                    4 => tile::<W, 4>(x, t, k, w0, w1),
                    3 => tile::<W, 3>(x, t, k, w0, w1),
                    2 => tile::<W, 2>(x, t, k, w0, w1),
                    _ => tile::<W, 1>(x, t, k, w0, w1),
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

    /// Dot products of tokens `t..t+T` with two weight rows.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn tile<W: Load + Copy, const T: usize>(
        x: &[f32],
        t: usize,
        k: usize,
        w0: &[W],
        w1: &[W],
    ) -> [[f32; 2]; TOKENS] {
        let mut a0 = [_mm256_setzero_ps(); T];
        let mut a1 = [_mm256_setzero_ps(); T];
        let body = k - k % 8;
        let xp = x.as_ptr().add(t * k);
        let mut i = 0;
        while i < body {
            let v0 = W::load8(w0, i);
            let v1 = W::load8(w1, i);
            for j in 0..T {
                let xv = _mm256_loadu_ps(xp.add(j * k + i));
                // Multiply, then add (no FMA): the reference's roundings exactly.
                a0[j] = _mm256_add_ps(a0[j], _mm256_mul_ps(xv, v0));
                a1[j] = _mm256_add_ps(a1[j], _mm256_mul_ps(xv, v1));
            }
            i += 8;
        }
        let mut out = [[0f32; 2]; TOKENS];
        for j in 0..T {
            let xr = &x[(t + j) * k..(t + j + 1) * k];
            let (mut s0, mut s1) = (hsum(a0[j]), hsum(a1[j]));
            for i in body..k {
                s0 += xr[i] * W::to_f32(w0[i]);
                s1 += xr[i] * W::to_f32(w1[i]);
            }
            out[j] = [s0, s1];
        }
        out
    }

    /// The lanes summed in the reference's order: `((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7))`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        // (b0+b1, b2+b3, ..), then their sum.
        let h = _mm_hadd_ps(b, b);
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::DType;

    fn matrix(rows: usize, cols: usize, dtype: DType, seed: u64) -> Matrix {
        let mut rng = crate::synthetic::SplitMix(seed);
        let vals: Vec<f32> = (0..rows * cols).map(|_| rng.symmetric()).collect();
        Matrix::from_tensor(&crate::synthetic::tensor(dtype, &[rows, cols], &vals).unwrap())
    }

    #[test]
    fn equals_the_reference_bit_for_bit_on_odd_shapes() {
        if !available() {
            return eprintln!("fast matmul: SKIPPED (no avx2+f16c here)");
        }
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4] {
            // Odd rows (a lone last row), tokens not a multiple of 4, k not a multiple of 8,
            // and more rows than one block.
            for (n, m, k) in [(1, 3, 8), (5, 33, 19), (7, 70, 300), (32, 65, 2048)] {
                let w = matrix(m, k, dtype, 7);
                let x: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect();
                let mut want = vec![0f32; n * m];
                super::super::super::ops::matmul(&x, &w, &mut want);
                let mut got = vec![f32::NAN; n * m];
                matmul(&x, &w, &mut got).unwrap();
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        r.to_bits(),
                        "{dtype:?} {n}x{m}x{k} [{i}]: {g} vs {r}"
                    );
                }
            }
        }
    }
}

//! AVX2 (+F16C) lanes on x86_64, detected at run time.

use super::super::lanes::Lanes;
use super::super::tiles::{self, Block};
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub struct Avx2(__m256);

/// Whether this machine has AVX2 and F16C (checked once).
pub fn detected() -> bool {
    use std::sync::OnceLock;
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
    })
}

impl Lanes for Avx2 {
    // 8 accumulators + 2 weights + 1 token of the 16 ymm registers.
    const TOKENS: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx2(_mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Avx2(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn bf16(p: *const u16) -> Self {
        let h = _mm_loadu_si128(p as *const __m128i);
        Avx2(_mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(h),
            16,
        )))
    }
    #[inline(always)]
    unsafe fn f16(p: *const u16) -> Self {
        Avx2(_mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Avx2(_mm256_add_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Avx2(_mm256_mul_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Avx2(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        Avx2(_mm256_sub_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn hsum8(a: [Self; 8]) -> Self {
        // b_k = lo(a_k) + hi(a_k), keys k and k + 4 in one register; then two horizontal adds
        // give each key ((l0+l4)+(l1+l5)) + ((l2+l6)+(l3+l7)), the order of `hsum`.
        let b = |k: usize| {
            let lo = _mm256_permute2f128_ps::<0x20>(a[k].0, a[k + 4].0);
            let hi = _mm256_permute2f128_ps::<0x31>(a[k].0, a[k + 4].0);
            _mm256_add_ps(lo, hi)
        };
        let h01 = _mm256_hadd_ps(b(0), b(1));
        let h23 = _mm256_hadd_ps(b(2), b(3));
        Avx2(_mm256_hadd_ps(h01, h23))
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        Avx2(_mm256_max_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        Avx2(_mm256_div_ps(a.0, b.0))
    }
    /// `ops::exp`'s operations in the same order, eight at a time (no FMA: each product and
    /// sum rounded as the scalar code rounds it).
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        use crate::reference::ops::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO, ROUND};
        // min(HI, x): a NaN lane stays NaN, as in the scalar comparison.
        let x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), self.0);
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
        let round = _mm256_set1_ps(ROUND);
        let n = _mm256_sub_ps(
            _mm256_add_ps(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
                round,
            ),
            round,
        );
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
            _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
        );
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let one = _mm256_set1_ps(1.0);
        let e = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), one);
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let v = _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
        Avx2(_mm256_andnot_ps(below, v))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        let v = self.0;
        let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        // (b0+b1, b2+b3, ..), then their sum.
        let h = _mm_hadd_ps(b, b);
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
    }
}

/// tiles::block compiled with AVX2 and F16C.
///
/// # Safety
/// `detected()` must be true.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn block(b: &Block, part: &mut [f32], scratch: &mut [f32]) {
    tiles::block::<Avx2>(b, part, scratch)
}

/// attention::run compiled with AVX2.
///
/// # Safety
/// `detected()` must be true.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn attention(
    a: &super::super::attention::Args,
    rows: std::ops::Range<usize>,
    part: &mut [f32],
) {
    super::super::attention::run::<Avx2>(a, rows, part)
}

/// softmax::run compiled with AVX2.
///
/// # Safety
/// `detected()` must be true.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn exp_sum(row: &[f32], max: f32) -> f64 {
    super::super::softmax::run::<Avx2>(row, max)
}

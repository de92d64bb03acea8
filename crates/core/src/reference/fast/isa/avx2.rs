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

//! NEON lanes on aarch64 (part of the base ISA there): two 128-bit registers. f16 weights
//! widen through `Lanes::f16`'s default (`vcvt_f32_f16` is not stable Rust).

use super::super::lanes::Lanes;
use std::arch::aarch64::*;

#[derive(Clone, Copy)]
pub struct Neon(float32x4_t, float32x4_t);

impl Lanes for Neon {
    // 16 accumulators + 4 weight halves + 2 token halves of the 32 q registers.
    const TOKENS: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Neon(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Neon(vld1q_f32(p), vld1q_f32(p.add(4)))
    }
    #[inline(always)]
    unsafe fn bf16(p: *const u16) -> Self {
        let h = vld1q_u16(p);
        let lo = vshlq_n_u32::<16>(vmovl_u16(vget_low_u16(h)));
        let hi = vshlq_n_u32::<16>(vmovl_u16(vget_high_u16(h)));
        Neon(vreinterpretq_f32_u32(lo), vreinterpretq_f32_u32(hi))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Neon(vaddq_f32(a.0, b.0), vaddq_f32(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Neon(vmulq_f32(a.0, b.0), vmulq_f32(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        vst1q_f32(p, self.0);
        vst1q_f32(p.add(4), self.1);
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        // b_i = a_i + a_{i+4}; then (b0+b1) + (b2+b3).
        let b = vaddq_f32(self.0, self.1);
        let p = vpaddq_f32(b, b);
        vgetq_lane_f32::<0>(p) + vgetq_lane_f32::<1>(p)
    }
}

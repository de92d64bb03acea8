//! wasm SIMD128 lanes: two v128 registers. Compiled in when the build enables `simd128`
//! (scripts/build-web.sh does; every current browser runs it), since wasm has no run-time
//! feature detection inside one module. SIMD128 has no half-float conversion: f16 weights widen
//! through `Lanes::f16`'s default.

use super::super::lanes::Lanes;
use std::arch::wasm32::*;

#[derive(Clone, Copy)]
pub struct Simd128(v128, v128);

impl Lanes for Simd128 {
    // Engines map v128 onto the host's 16 xmm registers: 8 accumulators + 4 weight halves.
    const TOKENS: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Simd128(f32x4_splat(0.0), f32x4_splat(0.0))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Simd128(
            v128_load(p as *const v128),
            v128_load(p.add(4) as *const v128),
        )
    }
    #[inline(always)]
    unsafe fn bf16(p: *const u16) -> Self {
        let h = v128_load(p as *const v128);
        let lo = i32x4_shl(u32x4_extend_low_u16x8(h), 16);
        let hi = i32x4_shl(u32x4_extend_high_u16x8(h), 16);
        Simd128(lo, hi)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Simd128(f32x4_add(a.0, b.0), f32x4_add(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Simd128(f32x4_mul(a.0, b.0), f32x4_mul(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        v128_store(p as *mut v128, self.0);
        v128_store(p.add(4) as *mut v128, self.1);
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        // b_i = a_i + a_{i+4}; then (b0+b1) + (b2+b3).
        let b = f32x4_add(self.0, self.1);
        (f32x4_extract_lane::<0>(b) + f32x4_extract_lane::<1>(b))
            + (f32x4_extract_lane::<2>(b) + f32x4_extract_lane::<3>(b))
    }
}

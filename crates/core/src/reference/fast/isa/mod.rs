//! The instruction sets the fast kernels have lanes for, and which one this machine runs.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod simd128;

use super::attention::Args;
use super::tiles::Block;

/// A SIMD instruction set this build has kernels for; only the ones that can exist on this
/// target are variants, so holding one means it can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "aarch64")]
    Neon,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
}

impl Isa {
    /// The instruction set this machine runs, if any (AVX2 is detected at run time; NEON is
    /// part of aarch64; SIMD128 is chosen when the wasm module is built).
    pub fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        if avx2::detected() {
            return Some(Isa::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        return Some(Isa::Neon);
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return Some(Isa::Simd128);
        #[allow(unreachable_code)]
        None
    }

    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => "neon",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => "simd128",
        }
    }

    /// tiles::block in this instruction set.
    ///
    /// # Safety
    /// `self` came from [`Isa::detect`] on this machine.
    pub unsafe fn block(self, b: &Block, part: &mut [f32], scratch: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::block(b, part, scratch),
            // NEON is part of aarch64 and simd128 was enabled for the whole module: no target
            // features to add, the generic kernel is compiled as it is.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => super::tiles::block::<neon::Neon>(b, part, scratch),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => super::tiles::block::<simd128::Simd128>(b, part, scratch),
        }
    }

    /// attention::run in this instruction set.
    ///
    /// # Safety
    /// `self` came from [`Isa::detect`] on this machine; the head dim is a multiple of 8.
    pub unsafe fn attention(self, a: &Args, rows: std::ops::Range<usize>, part: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::attention(a, rows, part),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => super::attention::run::<neon::Neon>(a, rows, part),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => super::attention::run::<simd128::Simd128>(a, rows, part),
        }
    }

    /// softmax::run in this instruction set.
    ///
    /// # Safety
    /// `self` came from [`Isa::detect`] on this machine.
    pub unsafe fn exp_sum(self, row: &[f32], max: f32) -> f64 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::exp_sum(row, max),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => super::softmax::run::<neon::Neon>(row, max),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => super::softmax::run::<simd128::Simd128>(row, max),
        }
    }
}

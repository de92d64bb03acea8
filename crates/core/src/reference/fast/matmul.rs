//! `out[n, m] = x[n, k] @ w[m, k]^T` in SIMD (isa/: AVX2 with F16C on x86_64, NEON on aarch64,
//! SIMD128 in a wasm build that enables it), weights widened in registers, bit for bit the
//! reference (tiles.rs says how).
//!
//! The weight rows are shared out over the pool in blocks of [`BLOCK`], which stay in L2 while
//! every token tile passes over them, so each weight is read from memory once per window.

use super::super::matrix::{Matrix, Weights};
use super::isa::Isa;
use super::tiles::Block;

/// Weight rows per cache block (32 rows of 2048 bf16: 128 KiB).
const BLOCK: usize = 32;

/// Whether this machine runs SIMD kernels (else `Kernels::Fast` runs the reference loops).
pub fn available() -> bool {
    Isa::detect().is_some()
}

/// What the kernels are called, for the backend's name.
pub fn isa() -> &'static str {
    Isa::detect().map_or("portable", Isa::name)
}

/// The fast matmul where the machine has one; `None` otherwise (the caller falls back to the
/// reference kernel).
pub fn matmul(x: &[f32], w: &Matrix, out: &mut [f32]) -> Option<()> {
    let isa = Isa::detect()?;
    let (k, m) = (w.cols, w.rows);
    let n = x.len() / k.max(1);
    // q8_0 / q4 rows are dequantized into this, a block at a time.
    let scratch_rows = match w.weights() {
        Weights::Packed => BLOCK,
        _ => 0,
    };
    super::super::ops::by_output_columns(n, m, n * m * k, BLOCK, out, |rows| {
        let mut part = vec![0f32; n * rows.len()];
        let mut scratch = vec![0f32; scratch_rows * k];
        for b in rows.clone().step_by(BLOCK) {
            let block = Block {
                x,
                k,
                w,
                rows: b..(b + BLOCK).min(rows.end),
                first: rows.start,
                width: rows.len(),
            };
            // SAFETY: `isa` came from Isa::detect on this machine.
            unsafe { isa.block(&block, &mut part, &mut scratch) };
        }
        part
    });
    Some(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{matrix, ramp};
    use super::*;
    use crate::weights::DType;

    #[test]
    fn equals_the_reference_bit_for_bit_on_odd_shapes() {
        if !available() {
            return eprintln!("fast matmul: SKIPPED (no SIMD kernels for this machine)");
        }
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4] {
            // Odd rows (a lone last row), tokens not a multiple of 4, k not a multiple of 8,
            // and more rows than one block.
            for (n, m, k) in [(1, 3, 8), (5, 33, 19), (7, 70, 300), (32, 65, 2048)] {
                let w = matrix(m, k, dtype, 7);
                let x = ramp(n * k);
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

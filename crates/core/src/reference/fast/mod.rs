//! The cpu backend's fast kernels: the reference backend's interpreter with its hot loops (the
//! matmuls, dense and per expert) in SIMD where the machine has it. `Kernels::Reference` keeps
//! the plain loops: the oracle the conformance suite compares every backend with.

pub mod attention;
pub mod int8;
pub mod isa;
mod lanes;
pub mod matmul;
pub mod softmax;
mod tiles;

use super::matrix::Matrix;
use super::ops;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Plain f32 loops, the definition (`--backend reference`).
    Reference,
    /// SIMD where the machine and the weight format have it, else the plain loop (`--backend cpu`).
    Fast,
    /// `Fast`, with q8_0 / q4 matrices multiplied by activations quantized to 8 bits per block
    /// (int8.rs): faster, not bit for bit (`--backend cpu --int8-dots`).
    Int8,
}

impl Kernels {
    /// `ops::attention`, in SIMD unless these are the reference kernels (bit for bit the same).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        self,
        qkv: &[f32],
        heads: crate::graph::Heads,
        k_cache: &[f32],
        v_cache: &[f32],
        start: usize,
        block: usize,
        out: &mut [f32],
    ) {
        if self != Kernels::Reference
            && attention::attention(qkv, heads, k_cache, v_cache, start, block, out)
        {
            return;
        }
        ops::attention(qkv, heads, k_cache, v_cache, start, block, out)
    }

    /// `out[n, w.rows] = x[n, w.cols] @ w^T`.
    pub fn matmul(self, x: &[f32], w: &Matrix, out: &mut [f32]) {
        if self == Kernels::Int8 && int8::matmul(x, w, out).is_some() {
            return;
        }
        if self != Kernels::Reference && matmul::matmul(x, w, out).is_some() {
            return;
        }
        ops::matmul(x, w, out)
    }
}

/// What the kernels' tests build their cases from.
#[cfg(test)]
pub(crate) mod testing {
    use super::Matrix;
    use crate::weights::DType;

    /// A `[rows, cols]` matrix of seeded values in (-1, 1), stored as `dtype`.
    pub fn matrix(rows: usize, cols: usize, dtype: DType, seed: u64) -> Matrix {
        let mut rng = crate::synthetic::SplitMix(seed);
        let vals: Vec<f32> = (0..rows * cols).map(|_| rng.symmetric()).collect();
        Matrix::from_tensor(&crate::synthetic::tensor(dtype, &[rows, cols], &vals).unwrap())
    }

    /// `len` activations in [-1, 1], no two neighbours alike.
    pub fn ramp(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect()
    }
}

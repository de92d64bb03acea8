//! Weight matrices as the reference backend holds them: in their stored precision, widened to
//! f32 one row at a time inside the kernels. Quantized matrices stay packed (the tensor's own
//! bytes, shared, not copied): a row is dequantized block by block into the caller's scratch.

use crate::weights::{DType, Tensor};

pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
    /// q8_0 / q4 blocks, exactly as loaded.
    Packed(Tensor),
}

/// A matrix's values as stored: f32, or the bits of bf16 / f16 halves; packed blocks are read
/// through `row_into` only.
pub enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    F16(&'a [u16]),
    Packed,
}

impl Matrix {
    /// A 1-D tensor becomes a single row.
    pub fn from_tensor(t: &Tensor) -> Matrix {
        let (rows, cols) = match t.shape.as_slice() {
            [r, c] => (*r, *c),
            [c] => (1, *c),
            s => (1, s.iter().product()),
        };
        let halves = || -> Vec<u16> {
            t.bytes()
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let data = match t.dtype {
            DType::F32 => Data::F32(t.to_f32()),
            DType::BF16 => Data::Bf16(halves()),
            DType::F16 => Data::F16(halves()),
            DType::Q8_0 | DType::Q4 => Data::Packed(t.clone()),
        };
        Matrix { rows, cols, data }
    }

    /// Writes row `r` as f32 into `out` (`cols` long).
    #[inline]
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let span = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[span]),
            Data::Bf16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[span]) {
                    *o = f32::from_bits((b as u32) << 16);
                }
            }
            Data::F16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[span]) {
                    *o = half::f16::from_bits(b).to_f32();
                }
            }
            Data::Packed(t) => t
                .packed()
                .expect("a packed tensor's size was checked when it was made")
                .row_into(r, out),
        }
    }

    /// The stored values, for kernels that widen them themselves.
    pub fn weights(&self) -> Weights<'_> {
        match &self.data {
            Data::F32(v) => Weights::F32(v),
            Data::Bf16(v) => Weights::Bf16(v),
            Data::F16(v) => Weights::F16(v),
            Data::Packed(_) => Weights::Packed,
        }
    }

    /// The packed tensor of a q8_0 / q4 matrix.
    pub fn packed_tensor(&self) -> Option<&Tensor> {
        match &self.data {
            Data::Packed(t) => Some(t),
            _ => None,
        }
    }

    /// The stored dtype (quantized matrices report their format).
    pub fn dtype(&self) -> DType {
        match &self.data {
            Data::F32(_) => DType::F32,
            Data::Bf16(_) => DType::BF16,
            Data::F16(_) => DType::F16,
            Data::Packed(t) => t.dtype,
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.row_into(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        out
    }
}

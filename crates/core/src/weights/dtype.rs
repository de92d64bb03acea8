//! Element types of stored tensors and their conversion to f32.

use crate::error::{Error, Result};
use crate::quant::{Packed, QuantFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// Packed blocks of `crate::quant::q8_0` (a matrix: the last dimension is the row).
    Q8_0,
    /// Packed blocks of `crate::quant::q4`.
    Q4,
}

impl DType {
    pub fn from_safetensors(d: safetensors::Dtype, tensor: &str) -> Result<Self> {
        match d {
            safetensors::Dtype::F32 => Ok(DType::F32),
            safetensors::Dtype::F16 => Ok(DType::F16),
            safetensors::Dtype::BF16 => Ok(DType::BF16),
            other => Err(Error::Weights(format!(
                "tensor `{tensor}` has dtype {other:?}; supported: BF16, F16, F32"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4 => "q4",
        }
    }

    /// The packed format of a quantized dtype.
    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            DType::Q8_0 => Some(QuantFormat::Q8_0),
            DType::Q4 => Some(QuantFormat::Q4),
            _ => None,
        }
    }

    pub fn from_quant(f: QuantFormat) -> Self {
        match f {
            QuantFormat::Q8_0 => DType::Q8_0,
            QuantFormat::Q4 => DType::Q4,
        }
    }

    /// Bytes needed for `numel` elements (for a quantized dtype: one row of `numel` columns).
    pub fn bytes_for(self, numel: usize) -> usize {
        match self {
            DType::F32 => numel * 4,
            DType::F16 | DType::BF16 => numel * 2,
            DType::Q8_0 | DType::Q4 => self.bytes_for_shape(&[numel]),
        }
    }

    /// Bytes of a tensor of `shape`. Quantized tensors pad each row (the last dimension) to
    /// whole blocks, so their size depends on the shape, not only on the element count.
    pub fn bytes_for_shape(self, shape: &[usize]) -> usize {
        match self.quant() {
            Some(f) => {
                let cols = shape.last().copied().unwrap_or(1);
                let rows = shape[..shape.len().saturating_sub(1)].iter().product();
                f.bytes_for(rows, cols)
            }
            None => self.bytes_for(shape.iter().product()),
        }
    }

    /// Widens `numel` elements of little-endian `bytes` to f32 (a quantized dtype is read as
    /// one row of `numel` columns; use [`DType::to_f32_shaped`] for matrices).
    pub fn to_f32(self, bytes: &[u8], numel: usize) -> Vec<f32> {
        self.to_f32_shaped(bytes, &[numel])
    }

    /// Widens (dequantizes) a whole tensor of `shape`.
    pub fn to_f32_shaped(self, bytes: &[u8], shape: &[usize]) -> Vec<f32> {
        if let Some(f) = self.quant() {
            let cols = shape.last().copied().unwrap_or(1);
            let rows = shape[..shape.len().saturating_sub(1)].iter().product();
            return match Packed::new(f, rows, cols, bytes) {
                Ok(p) => p.to_f32(),
                // Tensor::new checked the size; a raw caller with a wrong size gets zeros.
                Err(_) => vec![0.0; rows * cols],
            };
        }
        let mut out = vec![0f32; shape.iter().product()];
        self.widen_into(bytes, &mut out);
        out
    }

    /// Widens `out.len()` elements starting at the beginning of `bytes` (for a quantized dtype,
    /// `bytes` is one packed row of `out.len()` columns).
    pub fn widen_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            DType::Q8_0 | DType::Q4 => {
                let f = self.quant().expect("quantized dtype");
                if let Ok(p) = Packed::new(f, 1, out.len(), bytes) {
                    p.row_into(0, out);
                }
            }
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        }
    }
}

/// bf16 is the upper half of an f32: widening is a shift.
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

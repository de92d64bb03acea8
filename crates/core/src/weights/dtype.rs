//! Element types of stored tensors and their conversion to f32.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
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
        }
    }

    /// Bytes needed for `numel` elements.
    pub fn bytes_for(self, numel: usize) -> usize {
        match self {
            DType::F32 => numel * 4,
            DType::F16 | DType::BF16 => numel * 2,
        }
    }

    /// Widens `numel` elements of little-endian `bytes` to f32.
    pub fn to_f32(self, bytes: &[u8], numel: usize) -> Vec<f32> {
        let mut out = vec![0f32; numel];
        self.widen_into(bytes, &mut out);
        out
    }

    /// Widens `out.len()` elements starting at the beginning of `bytes`.
    pub fn widen_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
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

//! How a weight matrix sits on the device: rows of u32 words in a format, unpacked in registers
//! by the format's shader file (`shaders/formats/*.wgsl`, which defines `w_load4`). A format is
//! three things kept together here: the packer (host bytes to words), the row length in words,
//! and the shader. Quantized formats (q8_0, q4) keep their blocks as stored; the packer only
//! moves each row's blocks from the file's two planes (codes, then scales) next to each other,
//! in pairs behind one word of two scales, so a row is self-contained like any other format.

use crate::shaders;
use std::ops::Range;
use unmask_core::weights::{DType, Tensor};
use unmask_core::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightFormat {
    F32,
    Bf16,
    F16,
    Q8_0,
    Q4,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::Q8_0,
        WeightFormat::Q4,
    ];

    /// The device format of a stored tensor.
    pub fn of(dtype: DType) -> Result<Self> {
        #[allow(unreachable_patterns)]
        match dtype {
            DType::F32 => Ok(WeightFormat::F32),
            DType::BF16 => Ok(WeightFormat::Bf16),
            DType::F16 => Ok(WeightFormat::F16),
            DType::Q8_0 => Ok(WeightFormat::Q8_0),
            DType::Q4 => Ok(WeightFormat::Q4),
            other => Err(Error::backend(
                "wgpu",
                format!(
                    "weights stored as {} have no WGSL kernel yet (bf16, f16 and f32 do)",
                    other.name()
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4 => "q4",
        }
    }

    /// The WGSL that defines `w_load4` for this format.
    pub fn shader(self) -> &'static str {
        match self {
            WeightFormat::F32 => shaders::FORMAT_F32,
            WeightFormat::Bf16 => shaders::FORMAT_BF16,
            WeightFormat::F16 => shaders::FORMAT_F16,
            WeightFormat::Q8_0 => shaders::FORMAT_Q8_0,
            WeightFormat::Q4 => shaders::FORMAT_Q4,
        }
    }

    /// Words per packed row of `cols` values. Rows are padded with zeros to whole groups of four
    /// values, so that `w_load4` never straddles two rows and always starts on a word.
    /// Quantized rows are whole blocks of 32 values (`Packed::padded`: a stored last block wider
    /// than 32 is split in two with the same scale), in pairs of (scale word, code words).
    pub fn row_words(self, cols: usize) -> usize {
        let groups = cols.div_ceil(4);
        match self {
            WeightFormat::F32 => groups * 4,
            WeightFormat::Bf16 | WeightFormat::F16 => groups * 2,
            WeightFormat::Q8_0 | WeightFormat::Q4 => {
                let nb = cols.div_ceil(32);
                let pair = 1 + 2 * self.block_code_words();
                pair * (nb / 2) + (1 + self.block_code_words()) * (nb % 2)
            }
        }
    }

    /// Code words of one 32-value block of a quantized format.
    fn block_code_words(self) -> usize {
        match self {
            WeightFormat::Q8_0 => 8,
            WeightFormat::Q4 => 4,
            _ => 0,
        }
    }

    /// Packs rows `rows` of the `[rows, cols]` tensor `t` into `dst` (`rows.len() * row_words`
    /// words), zero padding included.
    pub fn pack_rows(self, t: &Tensor, cols: usize, rows: Range<usize>, dst: &mut [u32]) {
        let stride = self.row_words(cols);
        debug_assert_eq!(dst.len(), rows.len() * stride);
        let elem = match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 | WeightFormat::F16 => 2,
            WeightFormat::Q8_0 | WeightFormat::Q4 => {
                return self.pack_quantized_rows(t, rows, dst);
            }
        };
        let bytes = t.bytes();
        let row_bytes = cols * elem;
        let dst_bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        if row_bytes == stride * 4 {
            // No padding: the rows are the file's bytes.
            dst_bytes.copy_from_slice(&bytes[rows.start * row_bytes..rows.end * row_bytes]);
            return;
        }
        for (i, r) in rows.enumerate() {
            let d = &mut dst_bytes[i * stride * 4..(i + 1) * stride * 4];
            d[..row_bytes].copy_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
            d[row_bytes..].fill(0);
        }
    }
}

impl WeightFormat {
    /// Row by row, in the 32-column blocks of `Packed::padded`: for each pair of blocks
    /// (2g, 2g + 1), one word with their 16-bit scales (block 2g in the low half), then block
    /// 2g's code words, then block 2g + 1's. An odd last block gets its scale word (upper half
    /// zero) and its code words.
    fn pack_quantized_rows(self, t: &Tensor, rows: Range<usize>, dst: &mut [u32]) {
        let p = t
            .packed()
            .expect("WeightFormat::of gave a quantized format, so the tensor is packed");
        let cw = self.block_code_words();
        let stride = self.row_words(p.cols);
        let nbp = p.cols.div_ceil(32);
        let word = |bytes: &[u8], i: usize| {
            u32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        };
        for (i, r) in rows.enumerate() {
            let row = &mut dst[i * stride..(i + 1) * stride];
            let mut o = 0;
            for j in (0..nbp).step_by(2) {
                let first = p.piece(r, j);
                let second = (j + 1 < nbp).then(|| p.piece(r, j + 1));
                let scale = |s: [u8; 2]| u16::from_le_bytes(s) as u32;
                row[o] = scale(first.1) | second.map_or(0, |(_, s)| scale(s) << 16);
                o += 1;
                for (codes, _) in std::iter::once(first).chain(second) {
                    for k in 0..cw {
                        row[o] = word(&codes, k);
                        o += 1;
                    }
                }
            }
            debug_assert_eq!(o, stride);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_padded_to_groups_of_four() {
        let vals: Vec<f32> = (0..15).map(|v| v as f32).collect();
        let t = Tensor::from_f32(vec![3, 5], &vals).unwrap();
        let f = WeightFormat::F32;
        assert_eq!(f.row_words(5), 8);
        let mut dst = vec![7u32; 2 * 8];
        f.pack_rows(&t, 5, 1..3, &mut dst);
        let got: Vec<f32> = dst.iter().map(|&w| f32::from_bits(w)).collect();
        assert_eq!(&got[..8], &[5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0]);
        assert_eq!(&got[8..], &[10.0, 11.0, 12.0, 13.0, 14.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn half_formats_hold_two_values_per_word_lower_half_first() {
        let bits: Vec<u16> = vec![1, 2, 3, 4, 5, 6];
        let t = Tensor::from_bytes(
            DType::BF16,
            vec![2, 3],
            bytemuck::cast_slice(&bits).to_vec(),
        )
        .unwrap();
        let f = WeightFormat::Bf16;
        assert_eq!(f.row_words(3), 2);
        let mut dst = vec![0u32; 4];
        f.pack_rows(&t, 3, 0..2, &mut dst);
        assert_eq!(dst, vec![1 | 2 << 16, 3, 4 | 5 << 16, 6]);
    }
}

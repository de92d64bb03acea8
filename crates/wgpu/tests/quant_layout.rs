//! How q8_0 and q4 rows sit on the device: the 32-column pieces the shaders read, with the
//! scales leading each pair. (The quantized ops themselves are cases of the op suite,
//! `tests/tests/ops.rs`, against the reference backend.)

use unmask_core::quant::{quantize, QuantFormat};
use unmask_core::synthetic::SplitMix;
use unmask_core::weights::{DType, Tensor};
use unmask_wgpu::format::WeightFormat;

fn packed(f: QuantFormat, rows: usize, cols: usize, rng: &mut SplitMix) -> Tensor {
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal(1.0)).collect();
    let (bytes, _) = quantize(f, rows, cols, &v).unwrap();
    Tensor::from_bytes(DType::from_quant(f), vec![rows, cols], bytes).unwrap()
}

#[test]
fn device_rows_hold_the_blocks_in_scale_led_pairs() {
    // 70 columns are stored as two blocks (32 and 38 columns) and sit on the device as three
    // 32-column pieces (an odd count: one pair and a single); the last two carry the second
    // block's scale, the last one is zero past column 70.
    let mut rng = SplitMix(3);
    for (f, cw) in [(QuantFormat::Q8_0, 8usize), (QuantFormat::Q4, 4)] {
        let t = packed(f, 2, 70, &mut rng);
        let wf = WeightFormat::of(t.dtype).unwrap();
        let stride = wf.row_words(70);
        assert_eq!(stride, (1 + 2 * cw) + (1 + cw));
        let mut dst = vec![0u32; 2 * stride];
        wf.pack_rows(&t, 70, 0..2, &mut dst);
        let p = t.packed().unwrap();
        assert_eq!(p.nb, 2);
        let scale = |blk: usize| u16::from_le_bytes([p.scales[2 * blk], p.scales[2 * blk + 1]]);
        // The first code word of row 1's piece j: its bytes in the row's codes, zero past the row.
        let code = |j: usize| {
            let row = &p.codes[p.row_code_bytes..2 * p.row_code_bytes];
            let o = f.code_bytes(32 * j);
            let mut w = [0u8; 4];
            for (i, b) in w.iter_mut().enumerate() {
                *b = row.get(o + i).copied().unwrap_or(0);
            }
            u32::from_le_bytes(w)
        };
        let row1 = &dst[stride..];
        assert_eq!(row1[0], scale(2) as u32 | (scale(3) as u32) << 16);
        assert_eq!(row1[1], code(0));
        assert_eq!(row1[1 + cw], code(1));
        assert_eq!(row1[1 + 2 * cw], scale(3) as u32);
        assert_eq!(row1[2 + 2 * cw], code(2));
        let used = f.code_bytes(70 - 64).div_ceil(4);
        assert!(row1[2 + 2 * cw + used..].iter().all(|&w| w == 0), "{f}");
    }
}

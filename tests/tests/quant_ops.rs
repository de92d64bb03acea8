//! Quantized kernels of the reference backend against dequantize-then-f32 on random shapes
//! (including column counts that are not multiples of the 32-column block): matmul, the
//! grouped expert FFN and the embedding gather read the packed blocks directly.

use unmask_core::quant::{quantize, QuantFormat};
use unmask_core::reference::{ops, Kernels, Matrix};
use unmask_core::synthetic::SplitMix;
use unmask_core::weights::{DType, Tensor};

fn random(n: usize, rng: &mut SplitMix) -> Vec<f32> {
    (0..n).map(|_| rng.normal(1.0)).collect()
}

/// IEEE half precision (normal, subnormal and zero; the quantizer never stores inf or NaN).
fn f16_to_f32(h: u32) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((h >> 10) & 31, (h & 1023) as f32);
    sign * if e == 0 {
        m * 2f32.powi(-24)
    } else {
        (1.0 + m / 1024.0) * 2f32.powi(e as i32 - 15)
    }
}

/// Dequantizes a packed tensor straight from the byte layout documented in `quant::q8_0` and
/// `quant::q4` (independently of the library's decoder, so the two check each other).
fn decode_documented_layout(f: QuantFormat, rows: usize, cols: usize, bytes: &[u8]) -> Vec<f32> {
    // max(1, cols / 32) blocks per row, the last one running to the end of the row.
    let nb = (cols / 32).max(1);
    let row_code_bytes = match f {
        QuantFormat::Q8_0 => cols,
        QuantFormat::Q4 => cols.div_ceil(2),
    };
    let scales = &bytes[rows * row_code_bytes..];
    assert_eq!(scales.len(), rows * nb * 2);
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for col in 0..cols {
            let blk = r * nb + (col / 32).min(nb - 1);
            let h = u16::from_le_bytes([scales[2 * blk], scales[2 * blk + 1]]) as u32;
            let byte = bytes[r * row_code_bytes + if f == QuantFormat::Q4 { col / 2 } else { col }];
            out.push(match f {
                QuantFormat::Q8_0 => f16_to_f32(h) * byte as i8 as f32,
                QuantFormat::Q4 => {
                    let q = (byte >> (4 * (col % 2))) & 15;
                    let (k, c) = (h & 0xff, h >> 8);
                    let d = if k == 0 {
                        0.0
                    } else {
                        f32::from_bits(((k >> 3) + 107) << 23 | (k & 7) << 20)
                    };
                    d * (q as f32 - c as f32 / 16.0)
                }
            });
        }
    }
    out
}

/// A packed matrix and the f32 matrix of exactly its dequantized values.
fn pair(f: QuantFormat, rows: usize, cols: usize, rng: &mut SplitMix) -> (Matrix, Matrix) {
    let w = random(rows * cols, rng);
    let (bytes, _) = quantize(f, rows, cols, &w).unwrap();
    let values = decode_documented_layout(f, rows, cols, &bytes);
    let packed = Tensor::from_bytes(DType::from_quant(f), vec![rows, cols], bytes).unwrap();
    assert_eq!(
        packed.to_f32(),
        values,
        "{f} [{rows}, {cols}]: library vs documented layout"
    );
    let dense = Tensor::from_f32(vec![rows, cols], &values).unwrap();
    let (p, d) = (Matrix::from_tensor(&packed), Matrix::from_tensor(&dense));
    assert_eq!(p.dtype(), DType::from_quant(f));
    (p, d)
}

/// max |a - b| relative to max |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn quantized_matmul_equals_dequantized_f32_matmul() {
    let mut rng = SplitMix(11);
    let shapes = [
        (1, 1, 1),
        (3, 7, 31),
        (5, 33, 32),
        (2, 64, 48),
        (9, 100, 97),
        (32, 130, 256),
    ];
    for f in QuantFormat::ALL {
        for &(n, rows, cols) in &shapes {
            let (p, d) = pair(f, rows, cols, &mut rng);
            let x = random(n * cols, &mut rng);
            let (mut got, mut want) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            ops::matmul(&x, &p, &mut got);
            ops::matmul(&x, &d, &mut want);
            let e = rel_diff(&got, &want);
            assert!(e <= 1e-5, "{f} n={n} [{rows}, {cols}]: {e}");
            // Embedding rows gathered from the packed table are the dequantized rows.
            let r = rows - 1;
            let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
            p.row_into(r, &mut a);
            d.row_into(r, &mut b);
            assert_eq!(a, b, "{f} row {r} of [{rows}, {cols}]");
        }
    }
}

/// Experts stored as consecutive (gate, up, down) triples.
fn expert_set(m: &[Matrix]) -> ops::Experts<'_> {
    let pick = |k: usize| m.iter().skip(k).step_by(3).collect::<Vec<_>>();
    ops::Experts {
        gate: pick(0),
        up: pick(1),
        down: pick(2),
    }
}

#[test]
fn quantized_experts_equal_dequantized_experts() {
    let mut rng = SplitMix(5);
    let (h, inter, experts, top_k, n) = (72, 40, 6, 2, 7);
    for f in QuantFormat::ALL {
        let mut packed = Vec::new();
        let mut dense = Vec::new();
        for _ in 0..experts {
            for (rows, cols) in [(inter, h), (inter, h), (h, inter)] {
                let (p, d) = pair(f, rows, cols, &mut rng);
                packed.push(p);
                dense.push(d);
            }
        }
        let x = random(n * h, &mut rng);
        let ids: Vec<u32> = (0..n * top_k)
            .map(|i| ((i * 5 + i / 3) % experts) as u32)
            .collect();
        let weights: Vec<f32> = (0..n * top_k).map(|i| 0.2 + 0.1 * (i % 4) as f32).collect();
        let run = |set: &[Matrix]| {
            let mut out = vec![0f32; n * h];
            let ex = expert_set(set);
            ops::moe_experts(Kernels::Reference, &x, &ids, &weights, top_k, &ex, &mut out);
            out
        };
        let (got, want) = (run(&packed), run(&dense));
        let e = rel_diff(&got, &want);
        assert!(e <= 1e-5, "{f}: {e}");
    }
}

//! The sampler's softmax denominator, `ops::exp_sum`, eight exponentials at a time
//! (`Lanes::exp`, bit for bit `ops::exp`) into the same eight f64 partial sums: bit for bit
//! the reference on every machine. It was most of a greedy sampler's time (a libm f64 `exp`
//! per vocabulary entry).

use super::super::ops;
use super::isa::Isa;
use super::lanes::Lanes;

/// `ops::exp_sum(row, max)`, in SIMD where the machine has it.
pub fn exp_sum(row: &[f32], max: f32) -> f64 {
    match Isa::detect() {
        // SAFETY: `isa` came from Isa::detect on this machine.
        Some(isa) => unsafe { isa.exp_sum(row, max) },
        None => ops::exp_sum(row, max),
    }
}

/// The kernel over lanes `L`; isa/ compiles it with its target features.
///
/// # Safety
/// `L`'s instruction set is present.
#[inline(always)]
pub unsafe fn run<L: Lanes>(row: &[f32], max: f32) -> f64 {
    let whole = row.len() / 8 * 8;
    let m = L::splat(max);
    let mut acc = [0f64; 8];
    let mut e = [0f32; 8];
    for c in (0..whole).step_by(8) {
        L::sub(L::load(row.as_ptr().add(c)), m)
            .exp()
            .store(e.as_mut_ptr());
        for (a, &x) in acc.iter_mut().zip(&e) {
            *a += x as f64;
        }
    }
    ops::exp_sum_finish(acc, &row[whole..], max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_reference_bit_for_bit() {
        let mut rng = crate::synthetic::SplitMix(11);
        // Lengths with and without a tail; logits far below the maximum (exp underflows to 0),
        // -inf (a masked logit) and the maximum itself.
        for len in [1, 7, 8, 9, 64, 3840, 157_187] {
            let mut row: Vec<f32> = (0..len).map(|_| 30.0 * rng.symmetric()).collect();
            row[len / 2] = f32::NEG_INFINITY;
            row[len - 1] = -1e4;
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let want = ops::exp_sum(&row, max);
            let got = exp_sum(&row, max);
            assert_eq!(got.to_bits(), want.to_bits(), "{len}: {got} vs {want}");
            assert!(want >= 1.0, "the maximum's own term is 1");
        }
    }
}

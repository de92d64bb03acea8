//! Counter-based random numbers keyed by (seed, position, step): the same draw on every backend
//! and in any order, with 32-bit integer operations only so shaders reproduce it bit for bit.

/// A 32-bit avalanche hash ("lowbias32").
#[inline]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// A uniform number in [0, 1) with 24 random bits, exactly representable in f32.
pub fn uniform(seed: u64, position: u32, step: u32) -> f32 {
    let h = mix32(step ^ 0x9e37_79b9);
    let h = mix32(position ^ h);
    let h = mix32((seed >> 32) as u32 ^ h);
    let h = mix32(seed as u32 ^ h);
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_keyed_and_in_range() {
        let a = uniform(1, 10, 3);
        assert_eq!(a, uniform(1, 10, 3));
        assert_ne!(a, uniform(2, 10, 3));
        assert_ne!(a, uniform(1, 11, 3));
        assert_ne!(a, uniform(1, 10, 4));
        let mut sum = 0.0f64;
        for i in 0..10_000 {
            let u = uniform(7, i, 0);
            assert!((0.0..1.0).contains(&u));
            sum += u as f64;
        }
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
    }
}

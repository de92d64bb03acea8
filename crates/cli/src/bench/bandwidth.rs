//! The memory bandwidth a forward's floor is computed with: given by the user, measured by the
//! device (a large device-to-device copy), or measured here with a large host copy.

use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    pub bytes_per_second: f64,
    /// Where the figure comes from, in words ("given", "device copy", "host memcpy ...").
    pub source: String,
}

/// Copies `bytes` between two host buffers with every backend thread, several times, and
/// returns the best rate counting bytes read plus bytes written (as STREAM's copy does).
/// The buffers are far larger than any cache, so this is the DRAM bandwidth the cpu backend sees.
pub fn host_copy(bytes: usize, repeats: usize, threads: usize) -> Bandwidth {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    // First touch maps the pages: keep it out of the timing.
    copy_parallel(&src, &mut dst, threads);
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        copy_parallel(&src, &mut dst, threads);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    Bandwidth {
        bytes_per_second: 2.0 * bytes as f64 / best.max(1e-9),
        source: format!(
            "host memcpy of {} MiB, {threads} threads, best of {repeats} (read + write)",
            bytes >> 20
        ),
    }
}

fn copy_parallel(src: &[u8], dst: &mut [u8], threads: usize) {
    let chunk = src.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
            s.spawn(move || d.copy_from_slice(c));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_copy_measures_a_positive_rate_and_copies() {
        let b = host_copy(1 << 20, 2, 2);
        assert!(b.bytes_per_second.is_finite() && b.bytes_per_second > 0.0);
        assert!(b.source.contains("host memcpy"));
        let src: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut dst = vec![0u8; 1000];
        copy_parallel(&src, &mut dst, 3);
        assert_eq!(src, dst);
    }
}

//! Splitting a loop over the machine's cores: the calling thread and `threads() - 1`
//! persistent workers (pool.rs), made on first use (sequential on wasm32, which has no
//! threads here).

use std::ops::Range;

/// The estimated cost (multiply-adds, or their equivalent) a chunk must have to be worth
/// another thread. Measured on the tiny model's window step (2 threads, workers spinning
/// between loops), splitting loops of at least 2^22 (rayon's old threshold) took 1.9-2.0 ms after a
/// 256-token prompt; 2^18 1.25-1.3; 2^16 1.25-1.4 (docs/performance.md).
const CHUNK_WORK: usize = 1 << 15;

pub fn threads() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static N: OnceLock<usize> = OnceLock::new();
        *N.get_or_init(|| {
            std::env::var("UNMASK_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                })
                .min(super::pool::MAX_THREADS)
        })
    }
}

/// Runs `f` over contiguous chunks of `0..len` and returns the results in chunk order.
/// `work` estimates the cost: small loops stay on the calling thread, and no chunk is cut
/// smaller than [`CHUNK_WORK`].
pub fn map_chunks<T: Send, F: Fn(Range<usize>) -> T + Sync>(
    len: usize,
    work: usize,
    f: F,
) -> Vec<T> {
    let t = threads().min(len.max(1)).min(work / CHUNK_WORK);
    if t <= 1 {
        return vec![f(0..len)];
    }
    let chunk = len.div_ceil(t);
    let ranges: Vec<Range<usize>> = (0..t)
        .map(|i| i * chunk..((i + 1) * chunk).min(len))
        .filter(|r| !r.is_empty())
        .collect();
    #[cfg(target_arch = "wasm32")]
    {
        ranges.into_iter().map(f).collect()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::Mutex;
        // Each chunk fills its own slot; in chunk order afterwards.
        let slots: Vec<Mutex<Option<T>>> = ranges.iter().map(|_| Mutex::new(None)).collect();
        super::pool::run(ranges.len(), &|i| {
            let value = f(ranges[i].clone());
            *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        });
        slots
            .into_iter()
            .map(|s| {
                s.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("pool::run returns after every chunk ran")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_in_order() {
        for len in [0, 1, 2, 3, 17, 1000] {
            let parts = map_chunks(len, usize::MAX, |r| r);
            let flat: Vec<usize> = parts.into_iter().flatten().collect();
            assert_eq!(flat, (0..len).collect::<Vec<_>>());
        }
    }
}

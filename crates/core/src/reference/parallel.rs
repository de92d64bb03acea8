//! Splitting a loop over the machine's cores: rayon's pool, made once with `threads()` workers
//! (sequential on wasm32, which has no threads here).

use std::ops::Range;

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
            let n = std::env::var("UNMASK_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                });
            // The global pool takes this size unless the embedding program built it first.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
            rayon::current_num_threads()
        })
    }
}

/// Runs `f` over contiguous chunks of `0..len` and returns the results in chunk order.
/// `work` estimates the cost: small loops stay on the calling thread.
pub fn map_chunks<T: Send, F: Fn(Range<usize>) -> T + Sync>(
    len: usize,
    work: usize,
    f: F,
) -> Vec<T> {
    let t = threads().min(len.max(1));
    if t <= 1 || work < (1 << 22) {
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
        use rayon::prelude::*;
        // In order: the results come back as the ranges were cut.
        ranges.into_par_iter().map(&f).collect()
    }
}

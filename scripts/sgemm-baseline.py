#!/usr/bin/env python3
"""numpy/OpenBLAS f32 sgemm on the LLaDA2.0-mini shapes of `cargo bench -p unmask-core --bench ops`
(matmul group): the yardstick for the cpu backend's matmul on the same machine.

    python3 scripts/sgemm-baseline.py        # needs numpy (pip install numpy)
"""
import time

import numpy as np

HIDDEN = 2048
QKV = (16 + 2 * 4) * 128  # LLaDA2.0-mini: 16 query heads, 4 KV heads, head_dim 128


def bench(n, m, k, reps=50):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k), dtype=np.float32)
    w = rng.standard_normal((m, k), dtype=np.float32)
    out = np.empty((n, m), dtype=np.float32)
    for _ in range(5):
        np.matmul(x, w.T, out=out)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        np.matmul(x, w.T, out=out)
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    return med, 2 * n * m * k / med / 1e9


print(f"numpy {np.__version__}, BLAS: {np.show_config(mode='dicts')['Build Dependencies']['blas']['name']}")
for n in (1, 32):
    med, gflops = bench(n, QKV, HIDDEN)
    print(f"qkv f32 sgemm n={n:>2} ({n}x{HIDDEN} @ {HIDDEN}x{QKV}): {med * 1e3:.3f} ms median, {gflops:.1f} GFLOP/s")

// Op::MatMul: out[n, M] = x[n, K] @ W[M, K]^T with f32 activations, weights widened from their
// stored format in registers, f32 accumulation.
//
// A step is a handful of tokens against large weights, so the kernel is built to read each weight
// byte once: a warp owns MM_ROWS weight rows and a block of MM_WARPS warps owns MM_WARPS * MM_ROWS
// rows for a tile of up to MM_TOK tokens. grid.x tiles the tokens and grid.y the rows: blocks are
// issued x fastest, so the token tiles of one row block run side by side and meet in L2, and each
// weight byte comes from DRAM once a step (rows in grid.x would sweep a 644 MB lm_head once per
// token tile). Each lane reads 8 consecutive weights per row (one 16-byte load for bf16/f16) and
// the matching 8 activations of every token, then the warp reduces.
//
// Grid (ceil(n / MM_TOK), ceil(M / (MM_WARPS * MM_ROWS))), block MM_WARPS * 32.
// The grouped expert kernels (moe.cu) reuse mm_accumulate with gathered token rows.

#define MM_ROWS 4
#define MM_TOK 8
#define MM_WARPS 8

// acc[r][t] += sum_k W[r0 + r, k] * xs[t][k] for r < nr, t < nt, partial per lane (the caller
// reduces across the warp). Rows past nr and tokens past nt are computed from clamped indices
// and never stored.
template <int DT, int ROWS>
__device__ __forceinline__ void mm_accumulate(const WMat& w, u32 r0, u32 nr, const float* const* xs,
                                              u32 nt, float acc[ROWS][MM_TOK]) {
    const u32 lane = threadIdx.x & 31u;
    const u32 K = w.cols;
    u32 rows[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) rows[r] = r0 + ((u32)r < nr ? (u32)r : nr - 1u);
    if ((K & 7u) == 0u) {
        for (u32 k = lane * 8u; k < K; k += 256u) {
            float wv[ROWS][8];
#pragma unroll
            for (int r = 0; r < ROWS; r++) w_load8<DT>(w, rows[r], k, wv[r]);
#pragma unroll
            for (int t = 0; t < MM_TOK; t++) {
                if ((u32)t < nt) {
                    const float4* xp = (const float4*)(xs[t] + k);
                    float4 a = xp[0], b = xp[1];
                    float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                    for (int r = 0; r < ROWS; r++) {
                        float s = acc[r][t];
#pragma unroll
                        for (int j = 0; j < 8; j++) s += wv[r][j] * xv[j];
                        acc[r][t] = s;
                    }
                }
            }
        }
    } else {
        // Any K: one element per lane per iteration (test shapes, odd widths).
        for (u32 k = lane; k < K; k += 32u) {
            float wv[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; r++) wv[r] = w_load1<DT>(w, rows[r], k);
#pragma unroll
            for (int t = 0; t < MM_TOK; t++) {
                if ((u32)t < nt) {
                    float xv = xs[t][k];
#pragma unroll
                    for (int r = 0; r < ROWS; r++) acc[r][t] += wv[r] * xv;
                }
            }
        }
    }
}

// Reduces every accumulator across the warp (all lanes end with the totals).
template <int ROWS>
__device__ __forceinline__ void mm_reduce(float acc[ROWS][MM_TOK]) {
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
#pragma unroll
        for (int t = 0; t < MM_TOK; t++) acc[r][t] = warp_sum(acc[r][t]);
    }
}

template <int DT>
__device__ __forceinline__ void matmul_impl(const float* x, const u8* wbase, float* out, u32 n,
                                            u32 K, u32 M) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31u;
    const u32 r0 = (blockIdx.y * MM_WARPS + warp) * MM_ROWS;
    const u32 t0 = blockIdx.x * MM_TOK;
    if (r0 >= M || t0 >= n) return;
    const u32 nr = min((u32)MM_ROWS, M - r0);
    const u32 nt = min((u32)MM_TOK, n - t0);
    WMat w = {wbase, M, K};
    const float* xs[MM_TOK];
#pragma unroll
    for (int t = 0; t < MM_TOK; t++) xs[t] = x + (u64)(t0 + min((u32)t, nt - 1u)) * K;
    float acc[MM_ROWS][MM_TOK];
#pragma unroll
    for (int r = 0; r < MM_ROWS; r++) {
#pragma unroll
        for (int t = 0; t < MM_TOK; t++) acc[r][t] = 0.0f;
    }
    mm_accumulate<DT, MM_ROWS>(w, r0, nr, xs, nt, acc);
    mm_reduce<MM_ROWS>(acc);
    // Lane r * MM_TOK + t stores (row r, token t): 32 results, one per lane.
#pragma unroll
    for (int r = 0; r < MM_ROWS; r++) {
#pragma unroll
        for (int t = 0; t < MM_TOK; t++) {
            if (lane == (u32)(r * MM_TOK + t) && (u32)r < nr && (u32)t < nt)
                out[(u64)(t0 + t) * M + r0 + r] = acc[r][t];
        }
    }
}

extern "C" __global__ void matmul_f32(const float* x, const u8* w, float* out, u32 n, u32 K, u32 M) {
    matmul_impl<DT_F32>(x, w, out, n, K, M);
}
extern "C" __global__ void matmul_bf16(const float* x, const u8* w, float* out, u32 n, u32 K, u32 M) {
    matmul_impl<DT_BF16>(x, w, out, n, K, M);
}
extern "C" __global__ void matmul_f16(const float* x, const u8* w, float* out, u32 n, u32 K, u32 M) {
    matmul_impl<DT_F16>(x, w, out, n, K, M);
}
extern "C" __global__ void matmul_q8_0(const float* x, const u8* w, float* out, u32 n, u32 K, u32 M) {
    matmul_impl<DT_Q8_0>(x, w, out, n, K, M);
}
extern "C" __global__ void matmul_q4(const float* x, const u8* w, float* out, u32 n, u32 K, u32 M) {
    matmul_impl<DT_Q4>(x, w, out, n, K, M);
}

// The expert matrices of the grouped MoE (their routing, grouping and combine are in moe.cu, as
// in the WGSL sources): expert e's matrix of a layer's stack starts at e * matrix_bytes.
// moe_gate_up  act[j] = silu(x[t_j] @ Wg_e^T) * (x[t_j] @ Wu_e^T) for the j-th pair in expert
//              order; grid (ceil(M / rows per block), max active experts): block y takes the y-th
//              active expert and returns at once when fewer experts are active.
// moe_down     ys[p_j] = act[j] @ Wd_e^T, stored by pair so the combine finds it.

#define MOE_ROWS 2

template <int DT>
__device__ __forceinline__ void moe_gate_up_impl(const float* x, const u8* wg, const u8* wu,
                                                 u64 matrix_bytes, const u32* offsets,
                                                 const u32* active, const u32* num_active,
                                                 const u32* pairs, float* act, u32 top_k, u32 K,
                                                 u32 M) {
    if (blockIdx.y >= *num_active) return;
    const u32 e = active[blockIdx.y];
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31u;
    const u32 r0 = (blockIdx.x * MM_WARPS + warp) * MOE_ROWS;
    if (r0 >= M) return;
    const u32 nr = min((u32)MOE_ROWS, M - r0);
    const u32 begin = offsets[e], count = offsets[e + 1u] - begin;
    WMat g = {wg + (u64)e * matrix_bytes, M, K};
    WMat u = {wu + (u64)e * matrix_bytes, M, K};
    for (u32 t0 = 0; t0 < count; t0 += MM_TOK) {
        const u32 nt = min((u32)MM_TOK, count - t0);
        const float* xs[MM_TOK];
#pragma unroll
        for (int t = 0; t < MM_TOK; t++)
            xs[t] = x + (u64)(pairs[begin + t0 + min((u32)t, nt - 1u)] / top_k) * K;
        float ag[MOE_ROWS][MM_TOK], au[MOE_ROWS][MM_TOK];
#pragma unroll
        for (int r = 0; r < MOE_ROWS; r++) {
#pragma unroll
            for (int t = 0; t < MM_TOK; t++) {
                ag[r][t] = 0.0f;
                au[r][t] = 0.0f;
            }
        }
        mm_accumulate<DT, MOE_ROWS>(g, r0, nr, xs, nt, ag);
        mm_accumulate<DT, MOE_ROWS>(u, r0, nr, xs, nt, au);
        mm_reduce<MOE_ROWS>(ag);
        mm_reduce<MOE_ROWS>(au);
#pragma unroll
        for (int r = 0; r < MOE_ROWS; r++) {
#pragma unroll
            for (int t = 0; t < MM_TOK; t++) {
                if (lane == (u32)(r * MM_TOK + t) && (u32)r < nr && (u32)t < nt)
                    act[(u64)(begin + t0 + t) * M + r0 + r] = silu(ag[r][t]) * au[r][t];
            }
        }
    }
}

template <int DT>
__device__ __forceinline__ void moe_down_impl(const float* act, const u8* wd, u64 matrix_bytes,
                                              const u32* offsets, const u32* active,
                                              const u32* num_active, const u32* pairs, float* ys,
                                              u32 K, u32 M) {
    if (blockIdx.y >= *num_active) return;
    const u32 e = active[blockIdx.y];
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31u;
    const u32 r0 = (blockIdx.x * MM_WARPS + warp) * MM_ROWS;
    if (r0 >= M) return;
    const u32 nr = min((u32)MM_ROWS, M - r0);
    const u32 begin = offsets[e], count = offsets[e + 1u] - begin;
    WMat d = {wd + (u64)e * matrix_bytes, M, K};
    for (u32 t0 = 0; t0 < count; t0 += MM_TOK) {
        const u32 nt = min((u32)MM_TOK, count - t0);
        const float* xs[MM_TOK];
#pragma unroll
        for (int t = 0; t < MM_TOK; t++) xs[t] = act + (u64)(begin + t0 + min((u32)t, nt - 1u)) * K;
        float acc[MM_ROWS][MM_TOK];
#pragma unroll
        for (int r = 0; r < MM_ROWS; r++) {
#pragma unroll
            for (int t = 0; t < MM_TOK; t++) acc[r][t] = 0.0f;
        }
        mm_accumulate<DT, MM_ROWS>(d, r0, nr, xs, nt, acc);
        mm_reduce<MM_ROWS>(acc);
#pragma unroll
        for (int r = 0; r < MM_ROWS; r++) {
#pragma unroll
            for (int t = 0; t < MM_TOK; t++) {
                if (lane == (u32)(r * MM_TOK + t) && (u32)r < nr && (u32)t < nt)
                    ys[(u64)pairs[begin + t0 + t] * M + r0 + r] = acc[r][t];
            }
        }
    }
}

#define MOE_KERNELS(SUFFIX, DT)                                                                   \
    extern "C" __global__ void moe_gate_up_##SUFFIX(                                              \
        const float* x, const u8* wg, const u8* wu, u64 matrix_bytes, const u32* offsets,         \
        const u32* active, const u32* num_active, const u32* pairs, float* act, u32 top_k, u32 K, \
        u32 M) {                                                                                  \
        moe_gate_up_impl<DT>(x, wg, wu, matrix_bytes, offsets, active, num_active, pairs, act,    \
                             top_k, K, M);                                                        \
    }                                                                                             \
    extern "C" __global__ void moe_down_##SUFFIX(const float* act, const u8* wd, u64 matrix_bytes, \
                                                 const u32* offsets, const u32* active,           \
                                                 const u32* num_active, const u32* pairs,         \
                                                 float* ys, u32 K, u32 M) {                       \
        moe_down_impl<DT>(act, wd, matrix_bytes, offsets, active, num_active, pairs, ys, K, M);   \
    }

MOE_KERNELS(f32, DT_F32)
MOE_KERNELS(bf16, DT_BF16)
MOE_KERNELS(f16, DT_F16)
MOE_KERNELS(q8_0, DT_Q8_0)
MOE_KERNELS(q4, DT_Q4)

// Op::Attention in two kernels.
//
// kv_store: copies the window's K and V heads from the fused QKV buffer into the layer's cache
// (`[capacity, nkv * d]` f32 each) at positions start .. start + n. Grid (n), block 256.
//
// attention: block-causal attention of the window's queries over cache positions
// 0 .. visible(s), visible(s) = min(start + n, (s / B + 1) * B) for the query at s = start + row.
// One block per (row, q head); each of its warps walks a strided share of the keys with an online
// softmax (running max, running sum, running weighted V in registers: each lane holds the dims
// lane, lane + 32, ...), then the warps merge. Grid (n, nq), block ATT_WARPS * 32.

#define ATT_WARPS 4
#define ATT_DPL (MAX_HEAD_DIM / 32)

extern "C" __global__ void kv_store(const float* qkv, float* kc, float* vc, const u32* params,
                                    u32 nq, u32 nkv, u32 d) {
    const u32 row = blockIdx.x;
    const u32 width = (nq + 2u * nkv) * d, kvw = nkv * d;
    const u64 pos = (u64)params[P_START] + row;
    const float* src = qkv + (u64)row * width + (u64)nq * d;
    for (u32 j = threadIdx.x; j < kvw; j += blockDim.x) {
        kc[pos * kvw + j] = src[j];
        vc[pos * kvw + j] = src[kvw + j];
    }
}

extern "C" __global__ void attention(const float* qkv, const float* kc, const float* vc, float* out,
                                     const u32* params, u32 n, u32 nq, u32 nkv, u32 d) {
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wo[ATT_WARPS][MAX_HEAD_DIM];
    const u32 row = blockIdx.x, h = blockIdx.y;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 start = params[P_START], B = params[P_BLOCK];
    const u32 s = start + row;
    const u32 visible = min(start + n, (s / B + 1u) * B);
    const u32 width = (nq + 2u * nkv) * d, kvw = nkv * d;
    const u32 kvh = h / (nq / nkv);
    const float scale = 1.0f / sqrtf((float)d);
    const float* q = qkv + (u64)row * width + (u64)h * d;

    float qv[ATT_DPL], o[ATT_DPL];
#pragma unroll
    for (int i = 0; i < ATT_DPL; i++) {
        u32 j = lane + 32u * i;
        qv[i] = j < d ? q[j] : 0.0f;
        o[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (u32 t = warp; t < visible; t += ATT_WARPS) {
        const float* k = kc + (u64)t * kvw + (u64)kvh * d;
        const float* v = vc + (u64)t * kvw + (u64)kvh * d;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_DPL; i++) {
            u32 j = lane + 32u * i;
            if (j < d) dot += qv[i] * k[j];
        }
        float score = warp_sum(dot) * scale;
        float mn = fmaxf(m, score);
        float corr = expf(m - mn);  // 0 on the first key (m = -inf)
        float p = expf(score - mn);
        l = l * corr + p;
#pragma unroll
        for (int i = 0; i < ATT_DPL; i++) {
            u32 j = lane + 32u * i;
            if (j < d) o[i] = o[i] * corr + p * v[j];
        }
        m = mn;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_DPL; i++) {
        u32 j = lane + 32u * i;
        if (j < d) wo[warp][j] = o[i];
    }
    __syncthreads();
    // Merge the warps' partial softmaxes (a warp that saw no key has l = 0 and m = -inf).
    float mx = NEG_INF;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) mx = fmaxf(mx, wm[w]);
    float total = 0.0f, f[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) {
        f[w] = wl[w] > 0.0f ? expf(wm[w] - mx) : 0.0f;
        total += wl[w] * f[w];
    }
    float* orow = out + (u64)row * nq * d + (u64)h * d;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) acc += wo[w][j] * f[w];
        orow[j] = acc / total;
    }
}

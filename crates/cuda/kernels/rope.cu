// Op::QkNormRope, in place on the fused QKV buffer `[n, (nq + 2 nkv) * d]`: per-head RMS norm of
// the q heads (q_norm) and k heads (k_norm) when given, then NeoX RoPE on the first 2 * half dims
// at position start + row. inv_freq[j] = theta^(-2j / rot_dim) was computed on the host exactly as
// the reference computes it. Grid (n, nq + nkv), block 32 (one warp per head).

extern "C" __global__ void qk_norm_rope(float* qkv, const float* q_norm, const float* k_norm,
                                        const float* inv_freq, const u32* params, u32 nq, u32 nkv,
                                        u32 d, u32 half, float eps) {
    __shared__ float hd[MAX_HEAD_DIM];
    const u32 row = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    const u32 width = (nq + 2u * nkv) * d;
    float* head = qkv + (u64)row * width + (u64)h * d;
    const float* norm = h < nq ? q_norm : k_norm;
    for (u32 j = lane; j < d; j += 32u) hd[j] = head[j];
    __syncwarp();
    if (norm != 0) {
        float ss = 0.0f;
        for (u32 j = lane; j < d; j += 32u) ss += hd[j] * hd[j];
        ss = warp_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (u32 j = lane; j < d; j += 32u) hd[j] = norm[j] * (hd[j] * r);
        __syncwarp();
    }
    const float pos = (float)(params[P_START] + row);
    for (u32 j = lane; j < half; j += 32u) {
        float s, c;
        sincosf(pos * inv_freq[j], &s, &c);
        float x0 = hd[j], x1 = hd[j + half];
        head[j] = x0 * c - x1 * s;
        head[j + half] = x1 * c + x0 * s;
    }
    for (u32 j = 2u * half + lane; j < d; j += 32u) head[j] = hd[j];
}

// Op::MoeRoute: group-limited top-k routing of one token per block (SPEC §2), as the reference
// `route` computes it:
//   s = sigmoid(logits); sb = s + bias (bias only chooses);
//   group score = sum of the two largest sb of the group; keep the topk_group best groups;
//   choose the top_k largest sb among kept groups' experts (others are -inf, not 0);
//   w = s / (sum of chosen s + 1e-20) * scaling, ids in descending order of sb.
// Every "largest" is an argmax with ties to the lower index, done as repeated warp argmaxes.
//
// Grid (n), block 32. Dynamic shared memory: (3 * E + n_group) floats + (E + n_group) u32 flags.

// Warp argmax of v[0..count) among entries whose flag is 0: (value, index) with ties to the
// lower index; every lane gets the result.
__device__ __forceinline__ u32 warp_argmax_free(const float* v, const u32* taken, u32 count) {
    const u32 lane = threadIdx.x & 31u;
    float bv = NEG_INF;
    u32 bi = 0xffffffffu;
    for (u32 i = lane; i < count; i += 32u) {
        if (taken[i]) continue;
        float x = v[i];
        if (bi == 0xffffffffu || x > bv || (x == bv && i < bi)) {
            bv = x;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, bv, o);
        u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
        bool better = oi != 0xffffffffu &&
                      (bi == 0xffffffffu || ov > bv || (ov == bv && oi < bi));
        if (better) {
            bv = ov;
            bi = oi;
        }
    }
    return bi;
}

extern "C" __global__ void moe_route(const float* logits, const float* bias, u32* ids, float* wout,
                                     u32 E, u32 top_k, u32 n_group, u32 topk_group, float scaling) {
    extern __shared__ float sh[];
    float* s = sh;                      // [E] unbiased scores
    float* sb = s + E;                  // [E] biased scores
    float* masked = sb + E;             // [E] sb of kept groups, -inf elsewhere
    float* gscore = masked + E;         // [n_group]
    u32* taken = (u32*)(gscore + n_group);  // [E] experts already chosen
    u32* gtaken = taken + E;                // [n_group] groups already kept
    __shared__ u32 chosen[MAX_TOP_K];

    const u32 t = blockIdx.x, lane = threadIdx.x;
    const float* row = logits + (u64)t * E;
    for (u32 e = lane; e < E; e += 32u) {
        float v = 1.0f / (1.0f + expf(-row[e]));
        s[e] = v;
        sb[e] = bias != 0 ? v + bias[e] : v;
        masked[e] = NEG_INF;
        taken[e] = 0u;
    }
    for (u32 g = lane; g < n_group; g += 32u) gtaken[g] = 0u;
    __syncwarp();

    const u32 gs = E / n_group;
    for (u32 g = lane; g < n_group; g += 32u) {
        float m1 = NEG_INF, m2 = NEG_INF;
        bool have1 = false;
        for (u32 e = g * gs; e < (g + 1u) * gs; e++) {
            float v = sb[e];
            if (!have1 || v > m1) {
                if (have1) m2 = m1;
                m1 = v;
                have1 = true;
            } else if (v > m2) {
                m2 = v;
            }
        }
        gscore[g] = gs >= 2u ? m1 + m2 : m1;
    }
    __syncwarp();

    for (u32 r = 0; r < topk_group; r++) {
        u32 g = warp_argmax_free(gscore, gtaken, n_group);
        __syncwarp();
        if (g != 0xffffffffu) {
            if (lane == 0) gtaken[g] = 1u;
            for (u32 e = g * gs + lane; e < (g + 1u) * gs; e += 32u) masked[e] = sb[e];
        }
        __syncwarp();
    }

    for (u32 r = 0; r < top_k; r++) {
        u32 e = warp_argmax_free(masked, taken, E);
        __syncwarp();
        if (lane == 0) {
            taken[e] = 1u;
            chosen[r] = e;
        }
        __syncwarp();
    }

    if (lane == 0) {
        float sum = 0.0f;
        for (u32 r = 0; r < top_k; r++) sum += s[chosen[r]];
        for (u32 r = 0; r < top_k; r++) {
            ids[(u64)t * top_k + r] = chosen[r];
            wout[(u64)t * top_k + r] = s[chosen[r]] / (sum + 1e-20f) * scaling;
        }
    }
}

// MoE on the device (twin of moe.wgsl): routing, then the grouped expert matmuls.

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

// Op::MoeRoute with LLaDA2.2's block routing (SPEC §3c), as the reference `route_blocks`
// computes it (n_group and topk_group do not apply):
//   s = sigmoid(logits); r = s + bias (bias only chooses);
//   the step starts on a routing block boundary (the host checks it), so routing block b is rows
//   [b * size, min(n, (b + 1) * size)) of the step;
//   per routing block: g[e] = max over its rows of r[row][e]; the `capacity` experts with the
//   largest g are allowed (ties to the lower id, by counting the experts ranked before each);
//   per row: the top_k largest r among allowed experts (the others are -inf, not dropped),
//   descending, ties to the lower id; w = s / (sum of chosen s in that order + 1e-20) * scaling.
// A warp routes one row at a time: pick k is the warp argmax over the experts that come strictly
// after pick k - 1 in (r descending, id ascending) order, so no per-row scratch is needed; lane k
// keeps pick k (top_k <= MAX_TOP_K = 32).
//
// Grid (ceil(n / size)), block ROUTE_BLOCK_THREADS. Dynamic shared memory: E floats (g) and E u32
// flags (allowed).
#define ROUTE_BLOCK_THREADS 1024

__device__ __forceinline__ float route_score(const float* row, const float* bias, u32 e,
                                             float* s_out) {
    float s = 1.0f / (1.0f + expf(-row[e]));
    *s_out = s;
    return bias != 0 ? s + bias[e] : s;
}

extern "C" __global__ void __launch_bounds__(ROUTE_BLOCK_THREADS) moe_route_block(
    const float* logits, const float* bias, u32* ids, float* wout, u32 n, u32 E, u32 top_k,
    u32 size, u32 capacity, float scaling) {
    extern __shared__ float sh[];
    float* g = sh;                  // [E] block maximum of r
    u32* allowed = (u32*)(g + E);   // [E] 1 where the expert is allowed in this block

    const u32 first = blockIdx.x * size;
    if (first >= n) return;
    const u32 rows = min(size, n - first);
    for (u32 e = threadIdx.x; e < E; e += blockDim.x) {
        float m = NEG_INF, s;
        for (u32 r = 0; r < rows; r++) m = fmaxf(m, route_score(logits + (u64)(first + r) * E, bias, e, &s));
        g[e] = m;
    }
    __syncthreads();
    for (u32 e = threadIdx.x; e < E; e += blockDim.x) {
        const float v = g[e];
        u32 before = 0;
        for (u32 j = 0; j < E; j++) {
            const float w = g[j];
            before += (w > v || (w == v && j < e)) ? 1u : 0u;
        }
        allowed[e] = before < capacity ? 1u : 0u;
    }
    __syncthreads();

    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (u32 r = warp; r < rows; r += nw) {
        const u64 t = (u64)first + r;
        const float* row = logits + t * E;
        float pv = 0.0f;
        u32 pi = 0xffffffffu;
        u32 my_id = 0u;
        float my_s = 0.0f;
        for (u32 k = 0; k < top_k; k++) {
            float bv = NEG_INF, bs = 0.0f;
            u32 bi = 0xffffffffu;
            for (u32 e = lane; e < E; e += 32u) {
                float s;
                float v = route_score(row, bias, e, &s);
                if (!allowed[e]) v = NEG_INF;
                // Only experts strictly after the previous pick in (value desc, id asc) order.
                if (pi != 0xffffffffu && !(v < pv || (v == pv && e > pi))) continue;
                if (bi == 0xffffffffu || v > bv) {
                    bv = v;
                    bi = e;
                    bs = s;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(FULL_MASK, bv, o);
                float os = __shfl_xor_sync(FULL_MASK, bs, o);
                u32 oi = __shfl_xor_sync(FULL_MASK, bi, o);
                bool better = oi != 0xffffffffu &&
                              (bi == 0xffffffffu || ov > bv || (ov == bv && oi < bi));
                if (better) {
                    bv = ov;
                    bi = oi;
                    bs = os;
                }
            }
            // top_k <= E (checked at load): a pick always exists; guard the ids all the same.
            if (bi == 0xffffffffu) {
                bi = 0u;
                bs = 0.0f;
            }
            if (lane == k) {
                my_id = bi;
                my_s = bs;
            }
            pv = bv;
            pi = bi;
        }
        // The reference's sum, in pick order.
        float sum = 0.0f;
        for (u32 k = 0; k < top_k; k++) sum += __shfl_sync(FULL_MASK, my_s, k);
        if (lane < top_k) {
            ids[t * top_k + lane] = my_id;
            wout[t * top_k + lane] = my_s / (sum + 1e-20f) * scaling;
        }
    }
}

// Op::MoeExperts: out[t] = sum_k w[t,k] * swiglu_{ids[t,k]}(x[t]), computed per expert over the
// tokens routed to it so that each touched expert's weights are read once, with no host round
// trip. Four kernels, the same as the WGSL backend's (moe.wgsl and matmul.wgsl):
//
// moe_group    one block: per expert the number of (token, slot) pairs routed to it, exclusive
//              prefix sums (offsets), the ascending list of active experts and their count, and
//              the pairs grouped by expert (pair p = t * top_k + k, ascending p within an expert).
// moe_gate_up, moe_down   the experts' matrices over their pairs: in matmul.cu, beside the
//              other matrix kernels.
// moe_combine  out[t] = sum over t's slots in ascending expert id of w * ys (the reference's order).

// Up to 1024 threads (one per expert).
extern "C" __global__ void __launch_bounds__(1024) moe_group(const u32* ids, u32 n_pairs, u32 E, u32* offsets,
                                      u32* active, u32* num_active, u32* pairs) {
    extern __shared__ u32 cnt[];  // [E]
    for (u32 e = threadIdx.x; e < E; e += blockDim.x) {
        u32 c = 0;
        for (u32 p = 0; p < n_pairs; p++) c += ids[p] == e ? 1u : 0u;
        cnt[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 acc = 0, na = 0;
        for (u32 e = 0; e < E; e++) {
            u32 c = cnt[e];
            offsets[e] = acc;
            cnt[e] = acc;  // becomes the write cursor's base
            if (c > 0u) active[na++] = e;
            acc += c;
        }
        offsets[E] = acc;
        *num_active = na;
    }
    __syncthreads();
    for (u32 e = threadIdx.x; e < E; e += blockDim.x) {
        u32 o = cnt[e];
        for (u32 p = 0; p < n_pairs; p++) {
            if (ids[p] == e) pairs[o++] = p;
        }
    }
}


// Grid (ceil(H / 256), n), block 256.
extern "C" __global__ void moe_combine(const float* ys, const u32* ids, const float* w, float* out,
                                       u32 top_k, u32 H) {
    const u32 t = blockIdx.y;
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= H) return;
    u32 order[MAX_TOP_K];
    for (u32 k = 0; k < top_k; k++) {
        // Insertion by expert id: the reference adds each expert's share in ascending id order.
        u32 id = ids[(u64)t * top_k + k], j = k;
        while (j > 0u && ids[(u64)t * top_k + order[j - 1u]] > id) {
            order[j] = order[j - 1u];
            j--;
        }
        order[j] = k;
    }
    float acc = 0.0f;
    for (u32 i = 0; i < top_k; i++) {
        u64 p = (u64)t * top_k + order[i];
        acc += w[p] * ys[p * H + c];
    }
    out[(u64)t * H + c] = acc;
}

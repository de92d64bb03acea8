// Op::Sample: one logits row to SAMPLE_WORDS u32 words, reproducing the host definition in
// crates/core/src/decode/sampler.rs: (token, f32 bits of confidence, ranked[0..3]). One block of
// SAMPLE_THREADS threads per output row.
//
// Ranked (every row, either mode, independent of the drawn token): the three allowed ids with
// the largest logits, descending, ties to the lower id, NO_TOKEN past the allowed ids
// (`sampler::ranked`). Each thread keeps its own best three in one pass over the row; warps merge
// them by shuffles, then warp 0 merges the warps' lists.
//
// Greedy (temperature 0): argmax over allowed ids (not the mask, below valid_vocab), ties to the
// lower id (= ranked[0]); confidence = exp(best - max) / sum(exp(v - max)) over the whole row,
// summed in f64.
//
// Seeded (temperature > 0): candidates are allowed, finite ids with z = v * (1 / T). The host
// sorts them; here the same sets are found by radix selection on order-preserving keys of z:
//   top-k   keep z >= the k-th largest z (4 passes of 8-bit histograms of counts);
//   probs   q = exp(z - zmax) / total over the kept ids;
//   top-p   find the candidate where the descending cumulative mass first reaches p (4 passes of
//           8-bit histograms of mass, in fixed point so that the sums do not depend on the order
//           of the atomics and a seeded draw repeats exactly), keep every q >= its q,
//           renormalise;
//   draw    u = uniform(seed, position, step); the first id in ascending order whose cumulative
//           probability exceeds u (a block prefix sum over contiguous chunks of ids), else the
//           last kept id.
// Sums run in a different order than the host's sorted sums, so probabilities agree to float
// rounding; the token differs only where u falls within that rounding of a boundary.

#define SAMPLE_THREADS 1024
// Words per output row (unmask_core::backend::SAMPLE_WORDS) and the id of an empty ranked slot
// (unmask_core::backend::NO_TOKEN).
#define SAMPLE_WORDS 5
#define NO_TOKEN 0xffffffffu
// Probability mass in the top-p histograms as u64 fixed point (2^48 per unit): integer atomics
// add in any order to the same total, where float atomics would make the cut vary run to run.
#define MASS_ONE 281474976710656.0f

__device__ __forceinline__ u32 mix32(u32 x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// crates/core/src/decode/rng.rs `uniform`, bit for bit.
__device__ __forceinline__ float rng_uniform(u32 seed_lo, u32 seed_hi, u32 position, u32 step) {
    u32 h = mix32(step ^ 0x9e3779b9u);
    h = mix32(position ^ h);
    h = mix32(seed_hi ^ h);
    h = mix32(seed_lo ^ h);
    return (float)(h >> 8) * (1.0f / 16777216.0f);
}

// Order-preserving map of a float to u32 (larger float, larger key). -0 maps to +0's key: the host
// keeps values >= the k-th largest with a float comparison, where the two zeros are equal.
__device__ __forceinline__ u32 order_key(float f) {
    u32 b = __float_as_uint(f);
    if (b == 0x80000000u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ bool sample_allowed(u32 i, u32 mask, u32 valid_vocab) {
    return i != mask && i < valid_vocab;
}

__device__ __forceinline__ bool is_finite(float v) { return fabsf(v) <= 3.402823466e38f; }

struct SampleShared {
    u32 hist[256];
    u64 mass[256];
    u64 need;
    float fscratch[32];
    double dscratch[32];
    u32 uscratch[32];
    float chunk[SAMPLE_THREADS];
    // Per warp, its best three (value, id); then the row's best three.
    float top_v[32 * 3];
    u32 top_i[32 * 3];
    float rank_v[3];
    u32 rank_i[3];
    u32 sel;
    u32 pick;
    u32 last;
};

// (av, ai) ranks before (bv, bi): larger value, ties to the lower id; an empty slot (NO_TOKEN)
// ranks after everything.
__device__ __forceinline__ bool rank_before(float av, u32 ai, float bv, u32 bi) {
    return ai != NO_TOKEN && (bi == NO_TOKEN || av > bv || (av == bv && ai < bi));
}

// Inserts (v, i) into a descending best-three list (tv, ti), dropping what falls off its end.
// Selects rather than branches, so that the lists stay in registers. The list is sorted, so
// passing slot 0 implies passing slot 1 and 2; the ORs keep that so where NaNs break the order.
__device__ __forceinline__ void top3_insert(float* tv, u32* ti, float v, u32 i) {
    const bool b0 = rank_before(v, i, tv[0], ti[0]);
    const bool b1 = b0 || rank_before(v, i, tv[1], ti[1]);
    const bool b2 = b1 || rank_before(v, i, tv[2], ti[2]);
    const float v0 = tv[0], v1 = tv[1], v2 = tv[2];
    const u32 i0 = ti[0], i1 = ti[1], i2 = ti[2];
    tv[0] = b0 ? v : v0;
    ti[0] = b0 ? i : i0;
    tv[1] = b0 ? v0 : (b1 ? v : v1);
    ti[1] = b0 ? i0 : (b1 ? i : i1);
    tv[2] = b1 ? v1 : (b2 ? v : v2);
    ti[2] = b1 ? i1 : (b2 ? i : i2);
}

// Butterfly merge of the lanes' lists: every lane ends with the warp's best three. The lists
// merged at each level come from disjoint lanes; the id check keeps an id from entering twice
// even where NaN logits leave the order partial.
__device__ __forceinline__ void warp_top3(float* tv, u32* ti) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov[3];
        u32 oi[3];
#pragma unroll
        for (int k = 0; k < 3; k++) {
            ov[k] = __shfl_xor_sync(FULL_MASK, tv[k], o);
            oi[k] = __shfl_xor_sync(FULL_MASK, ti[k], o);
        }
#pragma unroll
        for (int k = 0; k < 3; k++) {
            if (oi[k] != ti[0] && oi[k] != ti[1] && oi[k] != ti[2]) top3_insert(tv, ti, ov[k], oi[k]);
        }
    }
}

// `sampler::ranked` of a row into sh.rank_i (sh.rank_v their logits), and the largest logit of
// the whole row (every thread gets it).
__device__ float row_ranked(const float* row, u32 vocab, u32 mask, u32 valid_vocab,
                            SampleShared& sh) {
    float mx = NEG_INF;
    float tv[3] = {NEG_INF, NEG_INF, NEG_INF};
    u32 ti[3] = {NO_TOKEN, NO_TOKEN, NO_TOKEN};
    // Ids ascend within a thread: an equal value never passes an earlier id.
    for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        mx = fmaxf(mx, v);
        if (sample_allowed(i, mask, valid_vocab)) top3_insert(tv, ti, v, i);
    }
    mx = block_max(mx, sh.fscratch);
    warp_top3(tv, ti);
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < 3; k++) {
            sh.top_v[warp * 3u + k] = tv[k];
            sh.top_i[warp * 3u + k] = ti[k];
        }
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int k = 0; k < 3; k++) {
            tv[k] = lane < nw ? sh.top_v[lane * 3u + k] : NEG_INF;
            ti[k] = lane < nw ? sh.top_i[lane * 3u + k] : NO_TOKEN;
        }
        warp_top3(tv, ti);
        if (lane == 0) {
#pragma unroll
            for (int k = 0; k < 3; k++) {
                sh.rank_v[k] = tv[k];
                sh.rank_i[k] = ti[k];
            }
        }
    }
    __syncthreads();
    return mx;
}

// Thread 0 writes a row's ranked words (after row_ranked, before sh.rank_* change).
__device__ __forceinline__ void write_ranked(u32* out, const SampleShared& sh) {
    if (threadIdx.x == 0) {
        out[2] = sh.rank_i[0];
        out[3] = sh.rank_i[1];
        out[4] = sh.rank_i[2];
    }
}

__device__ void sample_greedy(const float* row, u32 vocab, u32 mask, u32 valid_vocab, u32* out,
                              SampleShared& sh) {
    const float mx = row_ranked(row, vocab, mask, valid_vocab, sh);
    write_ranked(out, sh);
    const u32 best_i = sh.rank_i[0];
    const float best_v = sh.rank_v[0];
    if (best_i == NO_TOKEN) {
        if (threadIdx.x == 0) {
            out[0] = 0u;
            out[1] = __float_as_uint(0.0f);
        }
        return;
    }
    double sum = 0.0;
    for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) sum += exp((double)(row[i] - mx));
    sum = block_sum_d(sum, sh.dscratch);
    if (threadIdx.x == 0) {
        out[0] = best_i;
        out[1] = __float_as_uint((float)(exp((double)(best_v - mx)) / sum));
    }
}

// Radix selection over the keys of candidates that pass `keep_k` (the top-k bound, 0 = none):
// the key of the `rank`-th largest (rank >= 1).
__device__ u32 select_kth_key(const float* row, u32 vocab, u32 mask, u32 valid_vocab, float inv_t,
                              u32 rank, SampleShared& sh) {
    u32 prefix = 0u, pmask = 0u, remaining = rank;
    for (int pass = 0; pass < 4; pass++) {
        const u32 shift = 24u - 8u * (u32)pass;
        for (u32 b = threadIdx.x; b < 256u; b += blockDim.x) sh.hist[b] = 0u;
        __syncthreads();
        for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
            float v = row[i];
            if (!sample_allowed(i, mask, valid_vocab) || !is_finite(v)) continue;
            u32 key = order_key(v * inv_t);
            if ((key & pmask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 sel = 0u;
            for (int b = 255; b >= 0; b--) {
                u32 c = sh.hist[b];
                if (c >= remaining) {
                    sel = (u32)b;
                    break;
                }
                remaining -= c;
            }
            sh.sel = sel;
        }
        __syncthreads();
        prefix |= sh.sel << shift;
        pmask |= 255u << shift;
        if (threadIdx.x == 0) sh.uscratch[0] = remaining;
        __syncthreads();
        remaining = sh.uscratch[0];
        __syncthreads();
    }
    return prefix;
}

// Radix search for the key of the candidate where the descending cumulative mass of q first
// reaches p; q = exp(z - zmax) / total over candidates with key >= kmin.
__device__ u32 select_mass_key(const float* row, u32 vocab, u32 mask, u32 valid_vocab, float inv_t,
                               u32 kmin, float zmax, float total, float p, SampleShared& sh) {
    u32 prefix = 0u, pmask = 0u;
    u64 need = p > 0.0f ? __float2ull_rn(p * MASS_ONE) : 0ull;
    for (int pass = 0; pass < 4; pass++) {
        const u32 shift = 24u - 8u * (u32)pass;
        for (u32 b = threadIdx.x; b < 256u; b += blockDim.x) {
            sh.mass[b] = 0ull;
            sh.hist[b] = 0u;
        }
        __syncthreads();
        for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
            float v = row[i];
            if (!sample_allowed(i, mask, valid_vocab) || !is_finite(v)) continue;
            float z = v * inv_t;
            u32 key = order_key(z);
            if (key < kmin || (key & pmask) != prefix) continue;
            u32 b = (key >> shift) & 255u;
            atomicAdd(&sh.mass[b], __float2ull_rn(expf(z - zmax) / total * MASS_ONE));
            atomicAdd(&sh.hist[b], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 sel = 0xffffffffu, lowest = 0u;
            for (int b = 255; b >= 0; b--) {
                if (sh.hist[b] == 0u) continue;
                lowest = (u32)b;
                if (sh.mass[b] >= need) {
                    sel = (u32)b;
                    break;
                }
                need -= sh.mass[b];
            }
            // Rounding left the whole mass short of p: the cut falls on the smallest candidate.
            sh.sel = sel == 0xffffffffu ? lowest : sel;
            sh.need = need;
        }
        __syncthreads();
        prefix |= sh.sel << shift;
        pmask |= 255u << shift;
        need = sh.need;
        __syncthreads();
    }
    return prefix;
}

__device__ void sample_seeded(const float* row, u32 vocab, const u32* params, u32 position, u32* out,
                              SampleShared& sh) {
    const u32 mask = params[P_MASK], valid_vocab = params[P_VALID_VOCAB];
    const float inv_t = __uint_as_float(params[P_INV_TEMPERATURE]);
    const u32 top_k = params[P_TOP_K];
    const float top_p = __uint_as_float(params[P_TOP_P]);

    // Candidates: count and largest z.
    u32 count = 0u;
    float zmax = NEG_INF;
    for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (!sample_allowed(i, mask, valid_vocab) || !is_finite(v)) continue;
        count++;
        zmax = fmaxf(zmax, v * inv_t);
    }
    count = block_sum_u(count, sh.uscratch);
    zmax = block_max(zmax, sh.fscratch);
    if (count == 0u) {
        sample_greedy(row, vocab, mask, valid_vocab, out, sh);
        return;
    }
    // Ranked does not depend on the draw; sh.rank_i stays untouched below.
    row_ranked(row, vocab, mask, valid_vocab, sh);
    write_ranked(out, sh);
    // Top-k: keep keys >= the k-th largest key.
    u32 kmin = 0u;
    if (top_k > 0u && top_k < count) kmin = select_kth_key(row, vocab, mask, valid_vocab, inv_t, top_k, sh);

    float total = 0.0f;
    for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (!sample_allowed(i, mask, valid_vocab) || !is_finite(v)) continue;
        float z = v * inv_t;
        if (order_key(z) >= kmin) total += expf(z - zmax);
    }
    total = block_sum(total, sh.fscratch);

    // Top-p: keep q >= q_last; renormalise by the kept mass.
    float q_last = 0.0f, total2 = 1.0f;
    const bool use_p = top_p < 1.0f;
    if (use_p) {
        u32 kc = select_mass_key(row, vocab, mask, valid_vocab, inv_t, kmin, zmax, total, top_p, sh);
        // The key decodes back to the exact z of that candidate.
        u32 bits = (kc & 0x80000000u) ? (kc & 0x7fffffffu) : ~kc;
        q_last = expf(__uint_as_float(bits) - zmax) / total;
        float kept = 0.0f;
        for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) {
            float v = row[i];
            if (!sample_allowed(i, mask, valid_vocab) || !is_finite(v)) continue;
            float z = v * inv_t;
            if (order_key(z) < kmin) continue;
            float q = expf(z - zmax) / total;
            if (q >= q_last) kept += q;
        }
        total2 = block_sum(kept, sh.fscratch);
    }

    // Draw in ascending id order: thread t owns ids [t * chunk, (t + 1) * chunk).
    const float u = rng_uniform(params[P_SEED_LO], params[P_SEED_HI], position, params[P_STEP]);
    const u32 chunk = (vocab + blockDim.x - 1u) / blockDim.x;
    const u32 lo = threadIdx.x * chunk, hi = min(vocab, lo + chunk);
    float local = 0.0f;
    u32 last_kept = 0xffffffffu;
    for (u32 i = lo; i < hi; i++) {
        float v = row[i];
        if (!sample_allowed(i, mask, valid_vocab) || !is_finite(v)) continue;
        float z = v * inv_t;
        if (order_key(z) < kmin) continue;
        float q = expf(z - zmax) / total;
        if (use_p) {
            if (q < q_last) continue;
            q = q / total2;
        }
        local += q;
        last_kept = i;
    }
    sh.chunk[threadIdx.x] = local;
    if (threadIdx.x == 0) {
        sh.pick = 0xffffffffu;
        sh.last = 0u;
    }
    __syncthreads();
    if (last_kept != 0xffffffffu) atomicMax(&sh.last, last_kept);
    // Exclusive prefix of the chunk sums (serial over the block's chunks: 1024 adds, once a row).
    if (threadIdx.x == 0) {
        float acc = 0.0f;
        for (u32 t = 0; t < blockDim.x; t++) {
            float c = sh.chunk[t];
            sh.chunk[t] = acc;
            acc += c;
        }
    }
    __syncthreads();
    float cum = sh.chunk[threadIdx.x];
    if (u < cum + local) {
        for (u32 i = lo; i < hi; i++) {
            float v = row[i];
            if (!sample_allowed(i, mask, valid_vocab) || !is_finite(v)) continue;
            float z = v * inv_t;
            if (order_key(z) < kmin) continue;
            float q = expf(z - zmax) / total;
            if (use_p) {
                if (q < q_last) continue;
                q = q / total2;
            }
            cum += q;
            if (u < cum) {
                atomicMin(&sh.pick, i);
                break;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 pick = sh.pick != 0xffffffffu ? sh.pick : sh.last;
        float z = row[pick] * inv_t;
        float q = expf(z - zmax) / total;
        if (use_p) q = q / total2;
        out[0] = pick;
        out[1] = __float_as_uint(q);
    }
}

// Grid (out_rows), block SAMPLE_THREADS. Row r sits at position params[P_FIRST_OUT_POS] + r.
// 1024 threads: the bound keeps the compiler within 64 registers a thread.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample(const float* logits, u32* out, const u32* params, u32 vocab) {
    __shared__ SampleShared sh;
    const u32 r = blockIdx.x;
    const float* row = logits + (u64)r * vocab;
    u32* o = out + (u64)SAMPLE_WORDS * r;
    if (__uint_as_float(params[P_TEMPERATURE]) > 0.0f) {
        sample_seeded(row, vocab, params, params[P_FIRST_OUT_POS] + r, o, sh);
    } else {
        sample_greedy(row, vocab, params[P_MASK], params[P_VALID_VOCAB], o, sh);
    }
}

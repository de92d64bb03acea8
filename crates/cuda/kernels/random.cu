// Random weights made on the device for benchmarks of published shapes (no 30 GB host buffer and
// upload): a counter-based hash of (seed, element) gives each value, so any grid produces the same
// tensor. Statistics follow crates/core/src/synthetic.rs (matrices about N(0, std), norms
// 1 + spread * U(-1, 1)); the values themselves differ from the host generator's.

__device__ __forceinline__ u32 rnd_mix(u32 x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// Uniform in [-1, 1) from (seed, index, lane).
__device__ __forceinline__ float rnd_symmetric(u32 seed, u64 i, u32 lane) {
    u32 h = rnd_mix(seed ^ rnd_mix((u32)i ^ rnd_mix((u32)(i >> 32) ^ rnd_mix(lane * 0x9e3779b9u))));
    return (float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

// normal != 0: sum of four uniforms scaled to standard deviation `scale`, plus `offset`;
// otherwise offset + scale * U(-1, 1).
__device__ __forceinline__ float rnd_value(u32 seed, u64 i, float offset, float scale, u32 normal) {
    if (normal) {
        float s = rnd_symmetric(seed, i, 0) + rnd_symmetric(seed, i, 1) + rnd_symmetric(seed, i, 2) +
                  rnd_symmetric(seed, i, 3);
        return offset + s * scale * 0.8660254f;  // sqrt(3/4): four uniforms have variance 4/3
    }
    return offset + scale * rnd_symmetric(seed, i, 0);
}

__device__ __forceinline__ u32 f32_to_bf16_bits(float f) {
    u32 b = __float_as_uint(f);
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;  // round to nearest even (values are finite)
}

__device__ __forceinline__ u32 f32_to_f16_bits(float f) {
#ifdef UNMASK_EMULATOR
    return emu_f32_to_f16(f);  // crates/cuda/emulator (the CPU has no PTX)
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return (u32)h;
#endif
}

// Grid (ceil(count / 256)), block 256; dt is DT_F32, DT_BF16 or DT_F16.
extern "C" __global__ void fill_random(u8* out, u32 dt, u64 count, u32 seed, float offset,
                                       float scale, u32 normal) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float v = rnd_value(seed, i, offset, scale, normal);
    if (dt == DT_F32) {
        ((float*)out)[i] = v;
    } else if (dt == DT_BF16) {
        ((u16*)out)[i] = (u16)f32_to_bf16_bits(v);
    } else {
        ((u16*)out)[i] = (u16)f32_to_f16_bits(v);
    }
}

// q8_0 (crates/core/src/quant/q8_0.rs): one thread per 32-value block of a [rows, cols] matrix,
// quantized as the host quantizer does: d = f16(amax / 127), q = clamp(round(x / d), -127, 127),
// padding past `cols` stored as 0. Grid (ceil(rows * nb / 256)), block 256.
extern "C" __global__ void fill_random_q8_0(u8* out, u32 rows, u32 cols, u32 seed, float offset,
                                            float scale, u32 normal) {
    const u32 nb = q8_blocks_per_row(cols);
    u64 blk = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (blk >= (u64)rows * nb) return;
    const u64 r = blk / nb;
    const u32 c0 = (u32)(blk % nb) * 32u;
    float x[32];
    float amax = 0.0f;
    for (u32 j = 0; j < 32u; j++) {
        x[j] = c0 + j < cols ? rnd_value(seed, r * cols + c0 + j, offset, scale, normal) : 0.0f;
        amax = fmaxf(amax, fabsf(x[j]));
    }
    u32 dbits = f32_to_f16_bits(amax / 127.0f);
    float d = f16_bits_to_f32(dbits);
    float inv = d > 0.0f ? 1.0f / d : 0.0f;
    signed char* q = (signed char*)out + blk * 32u;
    for (u32 j = 0; j < 32u; j++) {
        float v = fminf(fmaxf(roundf(x[j] * inv), -127.0f), 127.0f);
        q[j] = (signed char)(int)v;
    }
    ((u16*)(out + (u64)rows * nb * 32u))[blk] = (u16)dbits;
}

// q4 (crates/core/src/quant/q4.rs): one thread per block with a plain min/max grid (the host
// encoder searches further; a benchmark only needs the format's bytes and plausible values).
// Grid (ceil(rows * nb / 256)), block 256.
extern "C" __global__ void fill_random_q4(u8* out, u32 rows, u32 cols, u32 seed, float offset,
                                          float scale, u32 normal) {
    const u32 nb = q8_blocks_per_row(cols);
    u64 blk = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (blk >= (u64)rows * nb) return;
    const u64 r = blk / nb;
    const u32 c0 = (u32)(blk % nb) * 32u;
    float x[32];
    float lo = POS_INF, hi = NEG_INF;
    for (u32 j = 0; j < 32u; j++) {
        x[j] = c0 + j < cols ? rnd_value(seed, r * cols + c0 + j, offset, scale, normal) : 0.0f;
        if (c0 + j < cols) {
            lo = fminf(lo, x[j]);
            hi = fmaxf(hi, x[j]);
        }
    }
    lo = fminf(lo, 0.0f);
    // Scale code: the 5-bit exponent and top 3 mantissa bits of (hi - lo) / 15, truncated.
    float d = (hi - lo) / 15.0f;
    u32 k = 0u;
    if (d > 0.0f) {
        u32 bits = __float_as_uint(d);
        int e = (int)(bits >> 23) - 107;
        e = e < 1 ? 1 : (e > 31 ? 31 : e);
        k = ((u32)e << 3) | ((bits >> 20) & 7u);
    }
    u32 header0 = k;
    float dq = q4_scale(header0);
    float c = dq > 0.0f ? fminf(fmaxf(roundf(-lo / dq * 16.0f), 0.0f), 255.0f) : 0.0f;
    u32 header = k | ((u32)c << 8);
    u8* codes = out + blk * 16u;
    for (u32 j = 0; j < 32u; j += 2u) {
        u32 q[2];
        for (u32 h = 0; h < 2u; h++) {
            float v = c0 + j + h < cols && dq > 0.0f ? roundf(x[j + h] / dq + c / 16.0f) : 0.0f;
            q[h] = (u32)fminf(fmaxf(v, 0.0f), 15.0f);
        }
        codes[j >> 1] = (u8)(q[0] | (q[1] << 4));
    }
    ((u16*)(out + (u64)rows * nb * 16u))[blk] = (u16)header;
}

// Shared by every kernel: fixed-width types, the layout of the per-step parameter words, weight
// widening for each stored format, and warp/block reductions.
//
// The program is compiled by NVRTC at load with no include paths: only what NVRTC declares
// implicitly may be used here (no <cstdint>, <cmath>, <cfloat>, INFINITY, FLT_MAX, cuda_bf16.h).
// bf16 and f16 are unpacked from their bits by hand; f16 uses the exact PTX conversion.

typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef unsigned short u16;
typedef unsigned char u8;

#define NEG_INF (__int_as_float(0xff800000))
#define POS_INF (__int_as_float(0x7f800000))
#define FULL_MASK 0xffffffffu

// Per-step scalars live in one device buffer of u32 words, written by the host before each
// replay of a captured step: a CUDA graph keyed by the step's token count stays valid while the
// start position, block length and sampling parameters change. The layout is core's
// `StepParams` (crates/core/src/step_params.rs); `src/params.rs` checks these against it.
#define P_START 0
#define P_BLOCK 1
#define P_FIRST_OUT_POS 5
#define P_STEP 6
#define P_SEED_LO 7
#define P_SEED_HI 8
#define P_TEMPERATURE 9
#define P_INV_TEMPERATURE 10
#define P_TOP_K 11
#define P_TOP_P 12
#define P_MASK 13
#define P_VALID_VOCAB 14
#define P_WORDS 16

// Stored weight formats (`src/weights.rs` mirrors these).
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2
#define DT_Q8_0 3
#define DT_Q4 4

// Widest head the attention and rope kernels hold in registers / shared memory.
#define MAX_HEAD_DIM 256
// Most experts per token the combine kernel orders in registers.
#define MAX_TOP_K 32

__device__ __forceinline__ float bf16_bits_to_f32(u32 bits) {
    return __uint_as_float(bits << 16);
}

__device__ __forceinline__ float f16_bits_to_f32(u32 bits) {
    unsigned short h = (unsigned short)bits;
#ifdef UNMASK_EMULATOR
    return emu_f16_to_f32(h);  // crates/cuda/emulator (the CPU has no PTX)
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

// One weight matrix `[rows, cols]` in its stored format. Quantized formats arrive in the
// 32-column block shape of `Packed::padded` (the stored bytes when cols % 32 == 0; otherwise a
// row's wider last block is split into 32-column pieces sharing its scale). Two planes,
// nb = ceil(cols / 32) blocks per row, block index blk = r * nb + c / 32:
//   q8_0 (crates/core/src/quant/q8_0.rs): rows*nb*32 bytes of i8 codes, then rows*nb f16 scales;
//        w = f32(d) * f32(q).
//   q4   (crates/core/src/quant/q4.rs): rows*nb*16 bytes of 4-bit codes (column i of a block is
//        byte i/2, low nibble when i is even), then rows*nb u16 headers k | c << 8;
//        d = k ? f32 with bits ((k >> 3) + 107) << 23 | (k & 7) << 20 : 0; w = d * (q - c/16).
struct WMat {
    const u8* base;
    u32 rows;
    u32 cols;
};

__device__ __forceinline__ u32 q8_blocks_per_row(u32 cols) { return (cols + 31u) >> 5; }

// q4 header: (scale d, offset c / 16).
__device__ __forceinline__ float q4_scale(u32 header) {
    u32 k = header & 0xffu;
    return k == 0u ? 0.0f : __uint_as_float((((k >> 3) + 107u) << 23) | ((k & 7u) << 20));
}
__device__ __forceinline__ float q4_offset(u32 header) { return (float)((header >> 8) & 0xffu) / 16.0f; }

// Element (r, k) as f32.
template <int DT>
__device__ __forceinline__ float w_load1(const WMat& m, u32 r, u32 k) {
    u64 i = (u64)r * m.cols + k;
    if (DT == DT_F32) {
        return ((const float*)m.base)[i];
    } else if (DT == DT_BF16) {
        return bf16_bits_to_f32(((const u16*)m.base)[i]);
    } else if (DT == DT_F16) {
        return f16_bits_to_f32(((const u16*)m.base)[i]);
    } else if (DT == DT_Q8_0) {
        u32 nb = q8_blocks_per_row(m.cols);
        u64 blk = (u64)r * nb + (k >> 5);
        const signed char* q = (const signed char*)m.base;
        const u16* scales = (const u16*)(m.base + (u64)m.rows * nb * 32u);
        return f16_bits_to_f32(scales[blk]) * (float)q[blk * 32u + (k & 31u)];
    } else {
        u32 nb = q8_blocks_per_row(m.cols);
        u64 blk = (u64)r * nb + (k >> 5);
        u32 i = k & 31u;
        u32 byte = m.base[blk * 16u + (i >> 1)];
        u32 q = (i & 1u) ? (byte >> 4) : (byte & 15u);
        u32 header = ((const u16*)(m.base + (u64)m.rows * nb * 16u))[blk];
        return q4_scale(header) * ((float)q - q4_offset(header));
    }
}

// Elements (r, k .. k + 8) as f32; k is a multiple of 8 and cols a multiple of 8, so every
// vector load below is aligned (weights are allocated 256-byte aligned).
template <int DT>
__device__ __forceinline__ void w_load8(const WMat& m, u32 r, u32 k, float* o) {
    u64 i = (u64)r * m.cols + k;
    if (DT == DT_F32) {
        const float4* p = (const float4*)((const float*)m.base + i);
        float4 a = p[0], b = p[1];
        o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
        o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
    } else if (DT == DT_BF16 || DT == DT_F16) {
        uint4 v = *(const uint4*)((const u16*)m.base + i);
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (DT == DT_BF16) {
                o[2 * j] = __uint_as_float(w[j] << 16);
                o[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
            } else {
                o[2 * j] = f16_bits_to_f32(w[j] & 0xffffu);
                o[2 * j + 1] = f16_bits_to_f32(w[j] >> 16);
            }
        }
    } else if (DT == DT_Q8_0) {
        u32 nb = q8_blocks_per_row(m.cols);
        u64 blk = (u64)r * nb + (k >> 5);
        const u16* scales = (const u16*)(m.base + (u64)m.rows * nb * 32u);
        float d = f16_bits_to_f32(scales[blk]);
        uint2 v = *(const uint2*)(m.base + blk * 32u + (k & 31u));
        u32 w[2] = {v.x, v.y};
#pragma unroll
        for (int j = 0; j < 8; j++) {
            int q = (int)(signed char)((w[j >> 2] >> (8 * (j & 3))) & 0xffu);
            o[j] = d * (float)q;
        }
    } else {
        u32 nb = q8_blocks_per_row(m.cols);
        u64 blk = (u64)r * nb + (k >> 5);
        u32 header = ((const u16*)(m.base + (u64)m.rows * nb * 16u))[blk];
        float d = q4_scale(header), c = q4_offset(header);
        // Eight 4-bit codes in one aligned u32 word: word blk * 4 + (k % 32) / 8.
        u32 word = ((const u32*)m.base)[blk * 4u + ((k & 31u) >> 3)];
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = d * ((float)((word >> (4 * j)) & 15u) - c);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronises the block twice.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : NEG_INF;
    return warp_max(t);
}

__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < nw ? scratch[lane] : 0.0;
    return warp_sum_d(t);
}

__device__ __forceinline__ u32 block_sum_u(u32 v, u32* scratch) {
    u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u32 t = lane < nw ? scratch[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(FULL_MASK, t, o);
    return t;
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

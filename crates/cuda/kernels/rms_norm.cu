// Op::RmsNorm: out = w * (x / sqrt(mean(x^2) + eps)) over each group of `d` values (one row).
// Op::AddRmsNorm: the same of x = a + b, which is also written to `sum` (the residual stream).
// Grid (rows), block 256.

// 1 / sqrt, not rsqrtf: the reference divides by the correctly rounded square root.
__device__ float inv_rms(float squares, float* scratch, u32 d, float eps) {
    float ss = block_sum(squares, scratch);
    return 1.0f / sqrtf(ss / (float)d + eps);
}

extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, u32 d, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (u64)blockIdx.x * d;
    float* orow = out + (u64)blockIdx.x * d;
    float ss = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
    float r = inv_rms(ss, scratch, d, eps);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) orow[j] = w[j] * (xr[j] * r);
}

// Each thread reads back only the sums it wrote.
extern "C" __global__ void add_rms_norm(const float* a, const float* b, const float* w, float* sum,
                                        float* out, u32 d, float eps) {
    __shared__ float scratch[32];
    u64 base = (u64)blockIdx.x * d;
    float ss = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        float v = a[base + j] + b[base + j];
        sum[base + j] = v;
        ss += v * v;
    }
    float r = inv_rms(ss, scratch, d, eps);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) out[base + j] = w[j] * (sum[base + j] * r);
}

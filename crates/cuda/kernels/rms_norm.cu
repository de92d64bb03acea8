// Op::RmsNorm: out = w * (x / sqrt(mean(x^2) + eps)) over each group of `d` values (one row).
// Grid (rows), block 256.

extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, u32 d, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (u64)blockIdx.x * d;
    float* orow = out + (u64)blockIdx.x * d;
    float ss = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss, scratch);
    // 1 / sqrt, not rsqrtf: the reference divides by the correctly rounded square root.
    float r = 1.0f / sqrtf(ss / (float)d + eps);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) orow[j] = w[j] * (xr[j] * r);
}

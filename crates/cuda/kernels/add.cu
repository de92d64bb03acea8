// Op::Add: out = a + b elementwise. Grid (ceil(count / 256)), block 256.

extern "C" __global__ void add(const float* a, const float* b, float* out, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = a[i] + b[i];
}

// Op::SwiGlu: out = silu(gate) * up elementwise. Grid (ceil(count / 256)), block 256.

extern "C" __global__ void swiglu(const float* gate, const float* up, float* out, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = silu(gate[i]) * up[i];
}

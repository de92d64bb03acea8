// The elementwise ops: Op::Add, Op::SwiGlu and Op::TakeLastRows (twins of elementwise.wgsl).

// Op::Add: out = a + b elementwise. Grid (ceil(count / 256)), block 256.

extern "C" __global__ void add(const float* a, const float* b, float* out, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = a[i] + b[i];
}

// Op::SwiGlu: out = silu(gate) * up elementwise. Grid (ceil(count / 256)), block 256.

extern "C" __global__ void swiglu(const float* gate, const float* up, float* out, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = silu(gate[i]) * up[i];
}

// Op::TakeLastRows: out = src[skip .. skip + count] (the rows whose predictions are wanted).
// Grid (ceil(count / 256)), block 256.

extern "C" __global__ void take_last_rows(const float* src, float* out, u32 skip, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = src[(u64)skip + i];
}

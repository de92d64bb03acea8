// Op::TakeLastRows: out = src[skip .. skip + count] (the rows whose predictions are wanted).
// Grid (ceil(count / 256)), block 256.

extern "C" __global__ void take_last_rows(const float* src, float* out, u32 skip, u32 count) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = src[(u64)skip + i];
}

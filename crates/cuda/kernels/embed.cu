// Op::Embed: out[i, :] = table[ids[i], :], widened to f32. Ids were checked on the host.
// Grid (ceil(cols / 256), n), block 256.

template <int DT>
__device__ __forceinline__ void embed_impl(const u32* ids, const u8* table, u32 vocab, u32 cols,
                                           float* out) {
    u32 i = blockIdx.y;
    u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    WMat m = {table, vocab, cols};
    out[(u64)i * cols + c] = w_load1<DT>(m, ids[i], c);
}

extern "C" __global__ void embed_f32(const u32* ids, const u8* table, u32 vocab, u32 cols, float* out) {
    embed_impl<DT_F32>(ids, table, vocab, cols, out);
}
extern "C" __global__ void embed_bf16(const u32* ids, const u8* table, u32 vocab, u32 cols, float* out) {
    embed_impl<DT_BF16>(ids, table, vocab, cols, out);
}
extern "C" __global__ void embed_f16(const u32* ids, const u8* table, u32 vocab, u32 cols, float* out) {
    embed_impl<DT_F16>(ids, table, vocab, cols, out);
}
extern "C" __global__ void embed_q8_0(const u32* ids, const u8* table, u32 vocab, u32 cols, float* out) {
    embed_impl<DT_Q8_0>(ids, table, vocab, cols, out);
}
extern "C" __global__ void embed_q4(const u32* ids, const u8* table, u32 vocab, u32 cols, float* out) {
    embed_impl<DT_Q4>(ids, table, vocab, cols, out);
}

// mv_reduce in workgroup memory: a tree over the invocations for half the accumulators at a
// time (8 KB, within WebGPU's 16 KB guarantee).
var<workgroup> mv_part: array<f32, 2048>;

fn mv_reduce(li: u32, acc: ptr<function, array<f32, MV_ACC>>) {
    for (var h = 0u; h < 2u; h++) {
        for (var v = 0u; v < 32u; v++) {
            mv_part[v * MV_WG + li] = (*acc)[32u * h + v];
        }
        for (var s = MV_WG / 2u; s > 0u; s >>= 1u) {
            workgroupBarrier();
            if (li < s) {
                for (var v = 0u; v < 32u; v++) {
                    mv_part[v * MV_WG + li] += mv_part[v * MV_WG + li + s];
                }
            }
        }
        workgroupBarrier();
        if (li < 32u) {
            mv_sum[32u * h + li] = mv_part[li * MV_WG];
        }
        workgroupBarrier();
    }
}

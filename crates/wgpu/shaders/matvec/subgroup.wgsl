// mv_reduce with subgroup operations: each subgroup adds its invocations' values, its lowest
// invocation writes them, and the subgroups' sums are added in invocation order (so the
// result does not depend on how the device lays subgroups out).
var<workgroup> mv_part: array<f32, 2048>;
var<workgroup> mv_lead: array<u32, MV_WG>;

fn mv_reduce(li: u32, acc: ptr<function, array<f32, MV_ACC>>) {
    let lead = subgroupMin(li) == li;
    mv_lead[li] = select(0u, 1u, lead);
    for (var h = 0u; h < 2u; h++) {
        for (var v = 0u; v < 32u; v++) {
            let s = subgroupAdd((*acc)[32u * h + v]);
            if (lead) {
                mv_part[v * MV_WG + li] = s;
            }
        }
        workgroupBarrier();
        if (li < 32u) {
            var total = 0.0;
            for (var j = 0u; j < MV_WG; j++) {
                if (mv_lead[j] == 1u) {
                    total += mv_part[li * MV_WG + j];
                }
            }
            mv_sum[32u * h + li] = total;
        }
        workgroupBarrier();
    }
}

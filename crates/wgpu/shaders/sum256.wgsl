// The sum of one value per invocation of a 256-invocation workgroup, by one fixed tree: kernels
// that call it on the same values get the same rounding (the norm kernels and the MoE combine's
// fused norm). Every invocation gets the total; call it in uniform control flow.
var<workgroup> sum256_part: array<f32, 256>;

fn sum256(li: u32, v: f32) -> f32 {
    sum256_part[li] = v;
    for (var h = 128u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            sum256_part[li] += sum256_part[li + h];
        }
    }
    workgroupBarrier();
    return sum256_part[0];
}

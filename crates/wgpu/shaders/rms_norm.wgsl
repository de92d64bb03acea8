// RMS norm over groups of `d` columns: out = w * (x / sqrt(mean(x^2) + eps)), statistics in f32.

struct NormParams {
    // Group length (the weight's length) and groups per row.
    d: u32,
    groups: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

// One workgroup per group: x = group within the row, y = row.
@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = (wg.y * p.groups + wg.x) * p.d;
    var s = 0.0;
    for (var j = li; j < p.d; j += WG) {
        let v = x[base + j];
        s += v * v;
    }
    partial[li] = s;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            partial[li] += partial[li + h];
        }
    }
    workgroupBarrier();
    let r = 1.0 / sqrt(partial[0] / f32(p.d) + p.eps);
    for (var j = li; j < p.d; j += WG) {
        out[base + j] = weight[j] * (x[base + j] * r);
    }
}

// RMS norm over groups of `d` columns: out = w * (x / sqrt(mean(x^2) + eps)), statistics in f32.
// add_rms_norm first forms x = a + b and writes it to `sum` (the residual stream).

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
@group(0) @binding(4) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> sum: array<f32>;

const WG: u32 = 256u;

// 1 / sqrt(mean + eps) from each invocation's sum of squares (sum256.wgsl's tree, shared with
// the MoE combine's fused norm, so every norm rounds alike).
fn inv_rms(li: u32, squares: f32) -> f32 {
    return 1.0 / sqrt(sum256(li, squares) / f32(p.d) + p.eps);
}

// One workgroup per group: x = group within the row, y = row.
fn rms_norm_group(wg: vec3<u32>, li: u32) {
    let base = (wg.y * p.groups + wg.x) * p.d;
    var s = 0.0;
    for (var j = li; j < p.d; j += WG) {
        let v = x[base + j];
        s += v * v;
    }
    let r = inv_rms(li, s);
    for (var j = li; j < p.d; j += WG) {
        out[base + j] = weight[j] * (x[base + j] * r);
    }
}

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    rms_norm_group(wg, li);
}

// The same grid; each invocation reads back only the sums it wrote.
fn add_rms_norm_group(wg: vec3<u32>, li: u32) {
    let base = (wg.y * p.groups + wg.x) * p.d;
    var s = 0.0;
    for (var j = li; j < p.d; j += WG) {
        let v = x[base + j] + b[base + j];
        sum[base + j] = v;
        s += v * v;
    }
    let r = inv_rms(li, s);
    for (var j = li; j < p.d; j += WG) {
        out[base + j] = weight[j] * (sum[base + j] * r);
    }
}

@compute @workgroup_size(256)
fn add_rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    add_rms_norm_group(wg, li);
}

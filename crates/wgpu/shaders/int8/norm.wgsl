// `int8_dots`: the norms that also quantize what they wrote for the integer product after them
// (int8/quantize.wgsl; rows of one group, p.groups == 1, so a workgroup holds a whole row).

// Row y's blocks of `out`, read back after the storage barrier that makes the workgroup's
// writes visible to all its invocations.
fn quantize_out_row(li: u32, y: u32) {
    storageBarrier();
    let nb = p.d / 32u;
    for (var blk = li; blk < nb; blk += WG) {
        var v: array<f32, 32>;
        for (var j = 0u; j < 32u; j++) {
            v[j] = out[y * p.d + 32u * blk + j];
        }
        quantize_block(y, nb, blk, v);
    }
}

@compute @workgroup_size(256)
fn rms_norm_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    rms_norm_group(wg, li);
    quantize_out_row(li, wg.y);
}

@compute @workgroup_size(256)
fn add_rms_norm_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    add_rms_norm_group(wg, li);
    quantize_out_row(li, wg.y);
}

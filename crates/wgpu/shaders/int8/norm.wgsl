// `int8_dots`: the norms that also quantize what they wrote for the integer product after them
// (int8/quantize.wgsl; rows of one group, p.groups == 1, so a workgroup holds a whole row).

fn q_src(i: u32) -> f32 {
    return out[i];
}

@compute @workgroup_size(256)
fn rms_norm_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    rms_norm_group(wg, li);
    quantize_written_row(li, WG, wg.y, p.d / 32u);
}

@compute @workgroup_size(256)
fn add_rms_norm_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    add_rms_norm_group(wg, li);
    quantize_written_row(li, WG, wg.y, p.d / 32u);
}

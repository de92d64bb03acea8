// `int8_dots`: the MoE combine that also quantizes the next layer's norm (residual 2) for the
// integer product after it (int8/quantize.wgsl). A workgroup writes a token's whole row.

fn q_src(i: u32) -> f32 {
    return normed[i];
}

@compute @workgroup_size(256)
fn moe_combine_residual_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    combine_residual(wg.y, li);
    quantize_written_row(li, CWG, wg.y, cp.h / 32u);
}

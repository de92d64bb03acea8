// `int8_dots`: the MoE combine that also quantizes the next layer's norm (residual 2) for the
// integer product after it (int8/quantize.wgsl). A workgroup writes a token's whole row.
@compute @workgroup_size(256)
fn moe_combine_residual_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.y;
    combine_residual(t, li);
    // Makes the workgroup's writes of `normed` visible to all its invocations.
    storageBarrier();
    let nb = cp.h / 32u;
    for (var blk = li; blk < nb; blk += CWG) {
        var v: array<f32, 32>;
        for (var j = 0u; j < 32u; j++) {
            v[j] = normed[t * cp.h + 32u * blk + j];
        }
        quantize_block(t, nb, blk, v);
    }
}

// `int8_dots`: attention that also quantizes its output for the integer output projection
// (int8/quantize.wgsl). A row's blocks of 32 columns lie within one query head (the lowering
// folds only where d is a multiple of 32), so a workgroup quantizes exactly the heads it wrote.

fn q_src(i: u32) -> f32 {
    return out[i];
}

// The blocks of rows i0 .. i0 + nr, query heads h0 .. h0 + g of `out`, read back after the
// storage barrier that makes the workgroup's writes visible to all its invocations.
fn quantize_heads(li: u32, i0: u32, nr: u32, h0: u32, g: u32) {
    storageBarrier();
    let per = p.d / 32u;
    for (var q = li; q < nr * g * per; q += WG) {
        let pr = q / per;
        quantize_block(i0 + pr / g, p.heads_q * per, (h0 + pr % g) * per + q % per);
    }
}

@compute @workgroup_size(64)
fn attention_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = attention_block(wg, li);
    quantize_heads(li, w.x, w.y, w.z, w.w);
}

@compute @workgroup_size(64)
fn attention_combine_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    attention_combine_row(wg, li);
    quantize_heads(li, wg.y, 1u, wg.x, 1u);
}

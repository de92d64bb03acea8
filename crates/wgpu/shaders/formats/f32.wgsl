// f32 weights: one value per word, rows padded to a multiple of four values.
fn w_load4(base: u32, c4: u32) -> vec4<f32> {
    let i = base + 4u * c4;
    return vec4<f32>(
        bitcast<f32>(w[i]),
        bitcast<f32>(w[i + 1u]),
        bitcast<f32>(w[i + 2u]),
        bitcast<f32>(w[i + 3u]),
    );
}

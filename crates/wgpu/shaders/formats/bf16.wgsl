// bf16 weights: two values per word (the lower half first, as the little-endian file stores
// them), rows padded to a multiple of four values. A bf16 is the upper half of an f32, so
// widening is a shift: no `shader-f16` needed.
fn w_load4(base: u32, c4: u32) -> vec4<f32> {
    let a = w[base + 2u * c4];
    let b = w[base + 2u * c4 + 1u];
    return vec4<f32>(
        bitcast<f32>(a << 16u),
        bitcast<f32>(a & 0xffff0000u),
        bitcast<f32>(b << 16u),
        bitcast<f32>(b & 0xffff0000u),
    );
}

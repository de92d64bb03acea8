// f16 weights: two values per word (the lower half first), rows padded to a multiple of four
// values. Widened with integer operations, so neither `shader-f16` nor the f16 unpacking
// built-ins (missing on some downlevel backends) are needed.
fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        // Zero or subnormal: m * 2^-24, exact in f32.
        let v = f32(m) * 5.9604644775390625e-8;
        return select(v, -v, sign != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

fn w_load4(base: u32, c4: u32) -> vec4<f32> {
    let a = w[base + 2u * c4];
    let b = w[base + 2u * c4 + 1u];
    return vec4<f32>(
        f16_bits_to_f32(a & 0xffffu),
        f16_bits_to_f32(a >> 16u),
        f16_bits_to_f32(b & 0xffffu),
        f16_bits_to_f32(b >> 16u),
    );
}

// q8_0 weights (crates/core/src/quant/q8_0.rs): blocks of 32 signed bytes with an f16 scale,
// w = f32(d) * f32(q). On the device a row is its blocks in pairs, each pair one word holding
// both scales (block 2g in the low half) followed by the two blocks' 16 code words (4 codes per
// word, the first column in the lowest byte); an odd last block is a pair of one (its scale word
// and 8 code words). Columns 4 c4 .. 4 c4 + 3 are code word c4 % 16 of pair c4 / 16.
fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        // Zero or subnormal: m * 2^-24, exact in f32.
        let v = f32(m) * 5.9604644775390625e-8;
        return select(v, -v, sign != 0u);
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// `w_int4` (a run's code word and its block's scale, WInt in int_run.wgsl; no offset) is the one
// decoder: `w_load4` widens its four bytes, the integer kernels take them as they are.
const W_OFFSET: bool = false;

fn w_load4(base: u32, c4: u32) -> vec4<f32> {
    let r = w_int4(base, c4);
    // Sign-extend each byte: shift it to the top, then arithmetic shift down.
    let v = vec4<i32>(
        bitcast<i32>(r.q << 24u),
        bitcast<i32>(r.q << 16u),
        bitcast<i32>(r.q << 8u),
        bitcast<i32>(r.q),
    ) >> vec4<u32>(24u);
    return r.d * vec4<f32>(v);
}

fn w_int4(base: u32, c4: u32) -> WInt {
    let g = base + 17u * (c4 / 16u);
    let s = w[g];
    let d = f16_bits_to_f32(select(s & 0xffffu, s >> 16u, (c4 & 8u) != 0u));
    return WInt(w[g + 1u + (c4 % 16u)], d, 0);
}

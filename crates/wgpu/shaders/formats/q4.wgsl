// q4 weights (crates/core/src/quant/q4.rs): blocks of 32 four-bit codes q with a 16-bit header
// k | c << 8: d = k ? 2^((k >> 3) - 20) * (1 + (k & 7) / 8) : 0, w = d * (f32(q) - f32(c) / 16).
// On the device a row is its blocks in pairs, each pair one word holding both headers (block 2g
// in the low half) followed by the two blocks' 8 code words (8 codes per word, the first column
// in the lowest nibble); an odd last block is a pair of one (its header word and 4 code words).
// Columns 4 c4 .. 4 c4 + 3 are half c4 % 2 of code word (c4 % 16) / 2 of pair c4 / 16.
fn q4_scale(k: u32) -> f32 {
    if (k == 0u) {
        return 0.0;
    }
    return bitcast<f32>((((k >> 3u) + 107u) << 23u) | ((k & 7u) << 20u));
}

// The integer form (`w_int4`, WInt in int_run.wgsl): a run's four codes as bytes (0 ..= 15, so
// positive as signed bytes), d / 16 and the offset c, as w = (d / 16) * (16 q - c): a run adds
// (d / 16) * (16 * sum(q * qx) - c * sum(qx)) in integers, as on the cpu (fast/int8.rs).
const W_OFFSET: bool = true;

fn w_load4(base: u32, c4: u32) -> vec4<f32> {
    let r = q4_run(base, c4);
    let d = q4_scale(r.x & 0xffu);
    // c / 16 is exact in f32, and so is q - c / 16: one rounding, as on the CPU.
    let off = f32(r.x >> 8u) * 0.0625;
    let n = r.y;
    let q = vec4<f32>(
        f32(n & 15u),
        f32((n >> 4u) & 15u),
        f32((n >> 8u) & 15u),
        f32((n >> 12u) & 15u),
    );
    return d * (q - vec4<f32>(off));
}

fn w_int4(base: u32, c4: u32) -> WInt {
    let r = q4_run(base, c4);
    let n = r.y;
    // The four nibbles spread into the low halves of four bytes.
    let q = (n & 0xfu) | ((n & 0xf0u) << 4u) | ((n & 0xf00u) << 8u) | ((n & 0xf000u) << 12u);
    return WInt(q, q4_scale(r.x & 0xffu) * 0.0625, i32(r.x >> 8u));
}

// Run c4's block header (k | c << 8) and its four codes (16 bits, the first in the lowest nibble).
fn q4_run(base: u32, c4: u32) -> vec2<u32> {
    let g = base + 9u * (c4 / 16u);
    let j = c4 % 16u;
    let hw = w[g];
    let h = select(hw & 0xffffu, hw >> 16u, j >= 8u);
    return vec2<u32>(h, (w[g + 1u + j / 2u] >> (16u * (j % 2u))) & 0xffffu);
}

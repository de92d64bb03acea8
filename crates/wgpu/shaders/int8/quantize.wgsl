// The activations' 8-bit blocks of the integer matrix-vector kernels (`WgpuOptions::int8_dots`;
// matvec/int8.wgsl reads them from `xq`): a row of k columns (k a multiple of 32) is k / 32
// blocks of 9 words, the block's scale amax / 127 (f32 bits) then its 32 values as signed
// bytes, 4 to a word, the first in the lowest byte; the cpu backend's rule
// (crates/core/src/reference/fast/int8.rs). `quantize_rows` (matvec/int8.wgsl) applies it to
// a product's input; a kernel that writes such an input itself (the norms, attention, the MoE
// combine: the other files here) applies it to what it wrote, and the product then needs no
// dispatch of its own (program/int8.rs, `Folds`). Every module that writes blocks includes this
// file: one binding number for `xq_out` in all of them.

@group(0) @binding(30) var<storage, read_write> xq_out: array<u32>;

// Rounds half away from zero, as Rust's `f32::round` on the cpu (WGSL's `round` goes to even),
// within +-127.
fn round_away(t: f32) -> i32 {
    let r = trunc(t);
    let v = select(r, r + sign(t), abs(t - r) >= 0.5);
    return i32(clamp(v, -127.0, 127.0));
}

// Every module that includes this file defines `q_src(i)`, element i of the rows it quantizes
// (row r, column c at r * k + c, k = 32 nb).

// Block b of row r (rows of nb blocks) of `xq_out`, from `q_src`.
fn quantize_block(r: u32, nb: u32, b: u32) {
    let x0 = (r * nb + b) * 32u;
    var amax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        amax = max(amax, abs(q_src(x0 + j)));
    }
    let d = amax / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    let o = (r * nb + b) * 9u;
    xq_out[o] = bitcast<u32>(d);
    for (var w4 = 0u; w4 < 8u; w4++) {
        var q: vec4<i32>;
        for (var j = 0u; j < 4u; j++) {
            q[j] = round_away(q_src(x0 + 4u * w4 + j) * inv);
        }
        xq_out[o + 1u + w4] = pack4xI8(q);
    }
}

// Row r's blocks, invocation li taking li, li + wg, ..., once the workgroup has written the
// row: the storage barrier makes its writes visible to all its invocations.
fn quantize_written_row(li: u32, wg: u32, r: u32, nb: u32) {
    storageBarrier();
    for (var b = li; b < nb; b += wg) {
        quantize_block(r, nb, b);
    }
}

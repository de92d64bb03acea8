// Integer dot products for q8_0 / q4 weights (`WgpuOptions::int8_dots`, llama.cpp's way and the
// cpu backend's `--int8-dots`, crates/core/src/reference/fast/int8.rs): the activations are
// quantized per block of 32 columns to signed bytes with an f32 scale amax / 127, and a run of
// four weights meets four activation bytes in one `dot4I8Packed`. Faster where weights are
// widened in registers; not bit for bit the f32 result (the activations are rounded to 8 bits).
//
// Quantized rows (`xq`): int8/quantize.wgsl's blocks.

struct QuantizeParams {
    // Columns of a row (a multiple of 32).
    k: u32,
    // Rows per grid row: 1 for a dense product, a token's slots for the experts' activations.
    per: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
    _pad4: u32,
    _pad5: u32,
}

@group(0) @binding(8) var<storage, read> qp: QuantizeParams;
@group(0) @binding(9) var<storage, read> xq: array<u32>;

// Rows of `x` into `xq_out`: an invocation per (row, block); grid y: rows / per.
@compute @workgroup_size(64)
fn quantize_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let nb = qp.k / 32u;
    let i = wg.x * 64u + li;
    if (i >= qp.per * nb) {
        return;
    }
    quantize_block(wg.y * qp.per + i / nb, nb, i % nb);
}

fn q_src(i: u32) -> f32 {
    return x[i];
}

// Run c4 (columns 4 c4 .. 4 c4 + 3) of quantized row r: its bytes, its block's scale and (for
// a format with an offset) the sum of its bytes.
struct XRun {
    q: u32,
    d: f32,
    s: i32,
}

fn xq_run(r: u32, c4: u32, k: u32) -> XRun {
    let at = (r * (k / 32u) + c4 / 8u) * 9u;
    var x: XRun;
    x.d = bitcast<f32>(xq[at]);
    x.q = xq[at + 1u + c4 % 8u];
    if (W_OFFSET) {
        x.s = dot4I8Packed(x.q, 0x01010101u);
    }
    return x;
}

// A weight run times an activation run: integer products, scaled once.
fn int_dot(x: XRun, w: WInt) -> f32 {
    var s = dot4I8Packed(w.q, x.q);
    if (W_OFFSET) {
        s = 16 * s - w.c * x.s;
    }
    return x.d * (w.d * f32(s));
}

// In place on the fused QKV rows: per-head RMS norm of the q and k heads (QK-norm, before RoPE),
// then NeoX RoPE on the first 2*half dims of each q and k head at position start + row. cos/sin
// come from a table computed on the host exactly as the reference computes them (f32 angle
// p * inv_freq), because GPU sin/cos lose precision on large angles. With flag bit 2 (the next
// op is the attention over these rows) the finished K heads and the V heads also go into the
// layer's KV cache at the row's position in its sequence's slot, so no separate store pass runs.
// A row's position and slot are its sequence's (`Seq`).

struct RopeParams {
    d: u32,
    heads_q: u32,
    heads_kv: u32,
    // Rotated pairs per head (rot_dim / 2).
    half: u32,
    // Row length of the QKV buffer.
    width: u32,
    eps: f32,
    // Bit 0: q heads normed; bit 1: k heads normed; bit 2: K and V stored into the cache.
    flags: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> p: RopeParams;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
// [q norm (d values), k norm (d values)].
@group(0) @binding(2) var<storage, read> norms: array<f32>;
// [position][pair] -> (cos, sin).
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>;
// The layer's cache, [position][kv heads * d] (spare buffers, never written, without flag bit 2).
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;

const WG: u32 = 64u;
const MAX_D: u32 = 512u;
var<workgroup> hv: array<f32, MAX_D>;
var<workgroup> partial: array<f32, WG>;

// x: head (q heads, then k heads, then, with flag bit 2, v heads), y: row.
@compute @workgroup_size(64)
fn qk_norm_rope(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let row = wg.y;
    let d = p.d;
    let base = row * p.width + h * d;
    let sq = st.seq[seq_of_row(row)];
    let pos = sq.start + row - sq.row0;
    // Where this head's K or V goes in the cache.
    let cached = (sq.kv_base + pos) * p.heads_kv * d + (h - p.heads_q) * d;
    if (h >= p.heads_q + p.heads_kv) {
        // A V head: stored as it is (h - heads_q runs past the K heads by exactly heads_kv).
        for (var j = li; j < d; j += WG) {
            v_cache[cached - p.heads_kv * d + j] = qkv[base + j];
        }
        return;
    }
    let is_q = h < p.heads_q;
    let store = !is_q && (p.flags & 4u) != 0u;
    let normed = (p.flags & select(2u, 1u, is_q)) != 0u;
    let nw = select(d, 0u, is_q);
    var s = 0.0;
    for (var j = li; j < d; j += WG) {
        let v = qkv[base + j];
        hv[j] = v;
        s += v * v;
    }
    partial[li] = s;
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        workgroupBarrier();
        if (li < k) {
            partial[li] += partial[li + k];
        }
    }
    workgroupBarrier();
    if (normed) {
        let r = 1.0 / sqrt(partial[0] / f32(d) + p.eps);
        for (var j = li; j < d; j += WG) {
            hv[j] = norms[nw + j] * (hv[j] * r);
        }
    }
    workgroupBarrier();
    for (var j = li; j < d; j += WG) {
        var v = hv[j];
        if (j < p.half) {
            let cs = table[pos * p.half + j];
            v = hv[j] * cs.x - hv[j + p.half] * cs.y;
        } else if (j < 2u * p.half) {
            let cs = table[pos * p.half + j - p.half];
            v = hv[j] * cs.x + hv[j - p.half] * cs.y;
        }
        qkv[base + j] = v;
        if (store) {
            k_cache[cached + j] = v;
        }
    }
}

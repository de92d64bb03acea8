// Block-causal attention over the KV cache (SPEC §2): key t is visible to query s iff
// floor(t / B) <= floor(s / B). `kv_store` first writes the chunk's K and V into the cache at
// positions start .. start + n; `attention` then reads keys 0 .. visible from the cache, with an
// online softmax over tiles of 64 keys.

struct AttnParams {
    d: u32,
    heads_q: u32,
    heads_kv: u32,
    // Row length of the QKV buffer and of one cache position (kv heads * d).
    width: u32,
    kv_width: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> p: AttnParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read> k_in: array<f32>;
@group(0) @binding(5) var<storage, read> v_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// x: columns of one position's K (and V), y: row.
@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    if (j >= p.kv_width) {
        return;
    }
    let src = i * p.width + p.heads_q * p.d + j;
    let dst = (st.start + i) * p.kv_width + j;
    k_cache[dst] = qkv[src];
    v_cache[dst] = qkv[src + p.kv_width];
}

const WG: u32 = 64u;
const MAX_D: u32 = 256u;
var<workgroup> qs: array<f32, MAX_D>;
var<workgroup> sc: array<f32, WG>;

fn neg_inf() -> f32 {
    // Through a variable: Chrome's WGSL compiler (Tint) rejects -inf as a constant expression.
    var bits = 0xff800000u;
    return bitcast<f32>(bits);
}

// One workgroup per (q head, row); invocation li owns output dims li, li + 64, ...
@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let i = wg.y;
    let d = p.d;
    let s = st.start + i;
    let visible = min(st.start + st.n, (s / st.block + 1u) * st.block);
    for (var j = li; j < d; j += WG) {
        qs[j] = qkv[i * p.width + h * d + j];
    }
    workgroupBarrier();
    let koff = (h / (p.heads_q / p.heads_kv)) * d;
    var m = neg_inf();
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < visible; t0 += WG) {
        // Invocation li scores key t0 + li ...
        let t = t0 + li;
        var score = neg_inf();
        if (t < visible) {
            var dot = 0.0;
            let kb = t * p.kv_width + koff;
            for (var j = 0u; j < d; j++) {
                dot += qs[j] * k_in[kb + j];
            }
            score = dot * p.scale;
        }
        sc[li] = score;
        workgroupBarrier();
        let count = min(WG, visible - t0);
        var cmax = neg_inf();
        for (var u = 0u; u < count; u++) {
            cmax = max(cmax, sc[u]);
        }
        let m_new = max(m, cmax);
        var f = 0.0;
        if (l > 0.0) {
            f = exp(m - m_new);
        }
        // ... and turns its score into a weight once, for every invocation to use.
        workgroupBarrier();
        if (li < count) {
            sc[li] = exp(score - m_new);
        }
        workgroupBarrier();
        l *= f;
        acc *= f;
        for (var u = 0u; u < count; u++) {
            let pr = sc[u];
            l += pr;
            let vb = (t0 + u) * p.kv_width + koff;
            for (var r = 0u; r < 4u; r++) {
                let j = li + WG * r;
                if (j < d) {
                    acc[r] += pr * v_in[vb + j];
                }
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    let ob = i * p.heads_q * d + h * d;
    for (var r = 0u; r < 4u; r++) {
        let j = li + WG * r;
        if (j < d) {
            out[ob + j] = acc[r] / l;
        }
    }
}

// The query heads that share a KV head, together: one workgroup per (KV head, row) reads each
// tile of keys, then of values, once and coalesced (consecutive invocations, consecutive
// floats) into workgroup memory and uses it for all of its heads, instead of every head
// reading the cache again. The same online softmax as `attention`, per head. Needs
// heads * d <= GQ_MAX, heads <= GH_MAX and d <= 4 * WG (load.rs picks `attention` otherwise).
const GH_MAX: u32 = 16u;
const GQ_MAX: u32 = 1024u;
const GKV_MAX: u32 = 2048u;
var<workgroup> gq: array<f32, GQ_MAX>;
// A tile of keys, then of values: `tile` positions of d floats.
var<workgroup> gkv: array<f32, GKV_MAX>;
// Per (head, key of the tile): the score, then its weight.
var<workgroup> gp: array<f32, 512>;
// Per head: the running max, the running sum, and this tile's rescale factor.
var<workgroup> gm: array<f32, GH_MAX>;
var<workgroup> gl: array<f32, GH_MAX>;
var<workgroup> gf: array<f32, GH_MAX>;

@compute @workgroup_size(64)
fn attention_grouped(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let hk = wg.x;
    let i = wg.y;
    let d = p.d;
    let g = p.heads_q / p.heads_kv;
    let s = st.start + i;
    let visible = min(st.start + st.n, (s / st.block + 1u) * st.block);
    // Keys per tile: as many as the tile memory holds, at most 512 / g scores.
    let tile = min(GKV_MAX / d, 512u / g);
    let koff = hk * d;
    for (var q = li; q < g * d; q += WG) {
        gq[q] = qkv[i * p.width + hk * g * d + q];
    }
    if (li < g) {
        gm[li] = neg_inf();
        gl[li] = 0.0;
    }
    // Invocation li owns dims li, li + 64, ... of every head.
    var acc: array<f32, 64>;
    for (var t0 = 0u; t0 < visible; t0 += tile) {
        let count = min(tile, visible - t0);
        workgroupBarrier();
        for (var q = li; q < count * d; q += WG) {
            gkv[q] = k_in[(t0 + q / d) * p.kv_width + koff + q % d];
        }
        workgroupBarrier();
        for (var q = li; q < g * count; q += WG) {
            let h = q / count;
            let t = q % count;
            var dot = 0.0;
            for (var j = 0u; j < d; j++) {
                dot += gq[h * d + j] * gkv[t * d + j];
            }
            gp[h * tile + t] = dot * p.scale;
        }
        workgroupBarrier();
        if (li < g) {
            var cmax = neg_inf();
            for (var t = 0u; t < count; t++) {
                cmax = max(cmax, gp[li * tile + t]);
            }
            let m = gm[li];
            let m_new = max(m, cmax);
            var f = 0.0;
            if (gl[li] > 0.0) {
                f = exp(m - m_new);
            }
            var l = gl[li] * f;
            for (var t = 0u; t < count; t++) {
                let pr = exp(gp[li * tile + t] - m_new);
                gp[li * tile + t] = pr;
                l += pr;
            }
            gm[li] = m_new;
            gl[li] = l;
            gf[li] = f;
        }
        workgroupBarrier();
        for (var q = li; q < count * d; q += WG) {
            gkv[q] = v_in[(t0 + q / d) * p.kv_width + koff + q % d];
        }
        workgroupBarrier();
        for (var h = 0u; h < GH_MAX; h++) {
            if (h < g) {
                let f = gf[h];
                for (var r = 0u; r < 4u; r++) {
                    let j = li + WG * r;
                    if (j < d) {
                        var a = acc[4u * h + r] * f;
                        for (var t = 0u; t < count; t++) {
                            a += gp[h * tile + t] * gkv[t * d + j];
                        }
                        acc[4u * h + r] = a;
                    }
                }
            }
        }
    }
    workgroupBarrier();
    let ob = i * p.heads_q * d + hk * g * d;
    for (var h = 0u; h < GH_MAX; h++) {
        if (h < g) {
            let l = gl[h];
            for (var r = 0u; r < 4u; r++) {
                let j = li + WG * r;
                if (j < d) {
                    out[ob + h * d + j] = acc[4u * h + r] / l;
                }
            }
        }
    }
}

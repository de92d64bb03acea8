// Block-causal attention over the KV cache (SPEC §2): key t is visible to query s iff
// floor(t / B) <= floor(s / B). Each row belongs to a sequence of the pass (`Seq`: its
// positions, block length and KV-cache slot). The sequence's K and V for its rows are in its
// slot at positions start .. start + rows (written by qk_norm_rope, or by `kv_store` when no
// rope precedes); `attention` then reads keys 0 .. visible of that slot only, with an online
// softmax over tiles.

struct AttnParams {
    d: u32,
    heads_q: u32,
    heads_kv: u32,
    // Row length of the QKV buffer and of one cache position (kv heads * d).
    width: u32,
    kv_width: u32,
    scale: f32,
    // Query heads of one workgroup (a group of the heads that share a KV head).
    group_heads: u32,
    _pad: u32,
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
    let sq = st.seq[seq_of_row(i)];
    let dst = (sq.kv_base + sq.start + i - sq.row0) * p.kv_width + j;
    k_cache[dst] = qkv[src];
    v_cache[dst] = qkv[src + p.kv_width];
}

const WG: u32 = 64u;

fn neg_inf() -> f32 {
    // Through a variable: Chrome's WGSL compiler (Tint) rejects -inf as a constant expression.
    var bits = 0xff800000u;
    return bitcast<f32>(bits);
}

// The query heads that share a KV head, together: one workgroup per (group of at most
// `group_heads` of them, row) reads each tile of keys, then of values, once and coalesced
// (consecutive invocations, consecutive floats) into workgroup memory and uses it for all its
// heads, instead of every head reading the cache again. The lowering keeps group_heads * d <=
// GQ_MAX and group_heads <= GH_MAX (d <= 4 * WG).
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

// x: (KV head, group of its query heads), y: row.
@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let d = p.d;
    let per_kv = p.heads_q / p.heads_kv;
    let groups = (per_kv + p.group_heads - 1u) / p.group_heads;
    let hk = wg.x / groups;
    // This workgroup's first query head and how many it takes.
    let h0 = hk * per_kv + (wg.x % groups) * p.group_heads;
    let g = min(p.group_heads, (hk + 1u) * per_kv - h0);
    let i = wg.y;
    let sq = st.seq[seq_of_row(i)];
    let s = sq.start + i - sq.row0;
    let visible = min(sq.start + sq.rows, (s / sq.block + 1u) * sq.block);
    // The sequence's slot in the cache.
    let kv0 = sq.kv_base;
    // Keys per tile: as many as the tile memory holds, at most 512 / g scores.
    let tile = min(GKV_MAX / d, 512u / g);
    let koff = hk * d;
    for (var q = li; q < g * d; q += WG) {
        gq[q] = qkv[i * p.width + h0 * d + q];
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
            gkv[q] = k_in[(kv0 + t0 + q / d) * p.kv_width + koff + q % d];
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
            gkv[q] = v_in[(kv0 + t0 + q / d) * p.kv_width + koff + q % d];
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
    let ob = i * p.heads_q * d + h0 * d;
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

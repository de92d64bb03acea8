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
    // Query heads of one workgroup (a group of the heads that share a KV head), and rows.
    group_heads: u32,
    tile_rows: u32,
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

// One workgroup per (KV head, group of its query heads, block of `tile_rows` rows of one
// sequence): every tile of keys, then of values, is read once and coalesced (consecutive
// invocations, consecutive floats) into workgroup memory and used by every (row, query head)
// pair of the workgroup, instead of each row and head reading the cache again. A row's
// arithmetic does not depend on its neighbours: it takes the keys of each tile that it sees
// (block-causal: a row past the others' blocks sees more), in the same order and tiles of the
// same size (a function of the head dim only) as alone, and leaves its state untouched for a
// tile it does not see. The lowering keeps group_heads * tile_rows <= PAIRS_MAX and their
// queries within GQ_MAX floats (d <= 4 * WG).
const PAIRS_MAX: u32 = 16u;
const GQ_MAX: u32 = 2048u;
const GKV_MAX: u32 = 1024u;
const T_MAX: u32 = 32u;
// The queries of the pairs: pair q = r * g + h is query head h0 + h of row i0 + r.
var<workgroup> gq: array<f32, GQ_MAX>;
// A tile of keys, then of values: `tile` positions of d floats.
var<workgroup> gkv: array<f32, GKV_MAX>;
// Per (pair, key of the tile): the score, then its weight.
var<workgroup> gp: array<f32, 512>;
// Per pair: the running max, the running sum, this tile's rescale factor and its keys here.
var<workgroup> gm: array<f32, PAIRS_MAX>;
var<workgroup> gl: array<f32, PAIRS_MAX>;
var<workgroup> gf: array<f32, PAIRS_MAX>;
var<workgroup> gc: array<u32, PAIRS_MAX>;

// Keys 0 .. of the sequence's slot that pass row `i` sees.
fn visible_keys(sq: Seq, i: u32) -> u32 {
    let s = sq.start + i - sq.row0;
    return min(sq.start + sq.rows, (s / sq.block + 1u) * sq.block);
}

// x: (KV head, group of its query heads), y: blocks of tile_rows rows of one sequence.
@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let d = p.d;
    let per_kv = p.heads_q / p.heads_kv;
    let groups = (per_kv + p.group_heads - 1u) / p.group_heads;
    let hk = wg.x / groups;
    // This workgroup's first query head and how many it takes.
    let h0 = hk * per_kv + (wg.x % groups) * p.group_heads;
    let g = min(p.group_heads, (hk + 1u) * per_kv - h0);
    let blk = seq_block(wg.y, p.tile_rows);
    let i0 = blk.x;
    let nr = blk.y;
    if (nr == 0u) {
        return;
    }
    let sq = st.seq[blk.z];
    let pairs = nr * g;
    // The block's last row sees the most keys (visibility never falls along the rows).
    let visible = visible_keys(sq, i0 + nr - 1u);
    // The sequence's slot in the cache.
    let kv0 = sq.kv_base;
    let tile = min(GKV_MAX / d, T_MAX);
    let koff = hk * d;
    for (var q = li; q < pairs * d; q += WG) {
        let pr = q / d;
        gq[q] = qkv[(i0 + pr / g) * p.width + (h0 + pr % g) * d + q % d];
    }
    if (li < pairs) {
        gm[li] = neg_inf();
        gl[li] = 0.0;
    }
    // Invocation li owns dims li, li + 64, ... of every pair.
    var acc: array<f32, 64>;
    for (var t0 = 0u; t0 < visible; t0 += tile) {
        let count = min(tile, visible - t0);
        workgroupBarrier();
        for (var q = li; q < count * d; q += WG) {
            gkv[q] = k_in[(kv0 + t0 + q / d) * p.kv_width + koff + q % d];
        }
        workgroupBarrier();
        for (var q = li; q < pairs * count; q += WG) {
            let pr = q / count;
            let t = q % count;
            if (t0 + t < visible_keys(sq, i0 + pr / g)) {
                var dot = 0.0;
                for (var j = 0u; j < d; j++) {
                    dot += gq[pr * d + j] * gkv[t * d + j];
                }
                gp[pr * tile + t] = dot * p.scale;
            }
        }
        workgroupBarrier();
        if (li < pairs) {
            let seen = visible_keys(sq, i0 + li / g);
            let c = select(0u, min(tile, seen - t0), seen > t0);
            gc[li] = c;
            if (c > 0u) {
                var cmax = neg_inf();
                for (var t = 0u; t < c; t++) {
                    cmax = max(cmax, gp[li * tile + t]);
                }
                let m = gm[li];
                let m_new = max(m, cmax);
                var f = 0.0;
                if (gl[li] > 0.0) {
                    f = exp(m - m_new);
                }
                var l = gl[li] * f;
                for (var t = 0u; t < c; t++) {
                    let pr = exp(gp[li * tile + t] - m_new);
                    gp[li * tile + t] = pr;
                    l += pr;
                }
                gm[li] = m_new;
                gl[li] = l;
                gf[li] = f;
            }
        }
        workgroupBarrier();
        for (var q = li; q < count * d; q += WG) {
            gkv[q] = v_in[(kv0 + t0 + q / d) * p.kv_width + koff + q % d];
        }
        workgroupBarrier();
        for (var h = 0u; h < PAIRS_MAX; h++) {
            if (h < pairs && gc[h] > 0u) {
                let c = gc[h];
                let f = gf[h];
                for (var r = 0u; r < 4u; r++) {
                    let j = li + WG * r;
                    if (j < d) {
                        var a = acc[4u * h + r] * f;
                        for (var t = 0u; t < c; t++) {
                            a += gp[h * tile + t] * gkv[t * d + j];
                        }
                        acc[4u * h + r] = a;
                    }
                }
            }
        }
    }
    workgroupBarrier();
    for (var h = 0u; h < PAIRS_MAX; h++) {
        if (h < pairs) {
            let l = gl[h];
            let ob = (i0 + h / g) * p.heads_q * d + (h0 + h % g) * d;
            for (var r = 0u; r < 4u; r++) {
                let j = li + WG * r;
                if (j < d) {
                    out[ob + j] = acc[4u * h + r] / l;
                }
            }
        }
    }
}

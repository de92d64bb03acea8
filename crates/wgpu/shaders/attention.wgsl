// Block-causal attention over the KV cache (SPEC §2): key t is visible to query s iff
// floor(t / B) <= floor(s / B). Each row belongs to a sequence of the pass (`Seq`: its
// positions, block length and KV-cache slot). The sequence's K and V for its rows are in its
// slot at positions start .. start + rows (written by qk_norm_rope, or by `kv_store` when no
// rope precedes); `attention` then reads keys 0 .. visible of that slot only, with an online
// softmax over tiles. Passes whose rows may see more than SPLIT_KEYS keys take split-KV
// instead: `attention_split` runs a row's keys as up to S_MAX ranges in parallel workgroups and
// `attention_combine` merges their partial softmaxes.

struct AttnParams {
    d: u32,
    heads_q: u32,
    heads_kv: u32,
    // Row length of the QKV buffer.
    width: u32,
    // Rows of a split-KV workgroup: tile_rows, or 1 (WgpuOptions::split_row_blocks).
    split_rows: u32,
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
// Split-KV partials: per (row, query head, split), d accumulated values, the max, the sum.
@group(0) @binding(7) var<storage, read_write> parts: array<f32>;

// Floats of one cache position (kv heads * d).
fn kv_width() -> u32 {
    return p.heads_kv * p.d;
}

// x: columns of one position's K (and V), y: row.
@compute @workgroup_size(64)
fn kv_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    if (j >= kv_width()) {
        return;
    }
    let src = i * p.width + p.heads_q * p.d + j;
    let sq = st.seq[seq_of_row(i)];
    let dst = (sq.kv_base + sq.start + i - sq.row0) * kv_width() + j;
    k_cache[dst] = qkv[src];
    v_cache[dst] = qkv[src + kv_width()];
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
// Per row of the workgroup: the keys lo .. hi it takes (`row_keys`).
var<workgroup> glo: array<u32, PAIRS_MAX>;
var<workgroup> ghi: array<u32, PAIRS_MAX>;

// Keys per tile: as many as the tile memory holds, at most T_MAX (a function of d only, so a
// row's tiles are the same in every kernel and pass).
fn key_tile() -> u32 {
    return min(GKV_MAX / p.d, T_MAX);
}

// Keys 0 .. of the sequence's slot that pass row `i` sees.
fn visible_keys(sq: Seq, i: u32) -> u32 {
    let s = sq.start + i - sq.row0;
    return min(sq.start + sq.rows, (s / sq.block + 1u) * sq.block);
}

// `row_keys`'s range for all the keys a row sees (the row-block kernel).
const WHOLE: u32 = 0xffffffffu;

// Keys lo .. hi of the sequence's slot that pass row `i` takes: all it sees (s = WHOLE), or its
// split-KV range s (empty past its last). Every lo is a multiple of the key tile.
fn row_keys(sq: Seq, i: u32, s: u32) -> vec2<u32> {
    let visible = visible_keys(sq, i);
    if (s == WHOLE) {
        return vec2<u32>(0u, visible);
    }
    let kr = key_ranges(visible);
    if (s >= kr.x) {
        return vec2<u32>(0u, 0u);
    }
    return vec2<u32>(s * kr.y, min((s + 1u) * kr.y, visible));
}

// Sets up the pairs of rows i0 .. i0 + nr and query heads h0 .. h0 + g: their queries, max
// and sum.
fn load_queries(li: u32, i0: u32, nr: u32, h0: u32, g: u32) {
    let d = p.d;
    for (var q = li; q < nr * g * d; q += WG) {
        let pr = q / d;
        gq[q] = qkv[(i0 + pr / g) * p.width + (h0 + pr % g) * d + q % d];
    }
    if (li < nr * g) {
        gm[li] = neg_inf();
        gl[li] = 0.0;
    }
}

// Keys of KV head hk of the sequence's slot, tile by tile, into the pairs' online softmax:
// pair q = r * g + h takes row i0 + r's keys of `row_keys(.., s)`, tiles at multiples of the
// key tile, and leaves its state untouched in the others, so a row's arithmetic is the same
// whatever rows share its workgroup. Invocation li accumulates dims li, li + 64, ... of every
// pair into `acc`.
fn attend_keys(
    li: u32,
    sq: Seq,
    i0: u32,
    nr: u32,
    g: u32,
    hk: u32,
    s: u32,
    acc: ptr<function, array<f32, 64>>,
) {
    let d = p.d;
    let pairs = nr * g;
    let kv0 = sq.kv_base;
    let tile = key_tile();
    let koff = hk * d;
    // The tiles from the rows' lowest key to their highest (a workgroup-uniform loop).
    var lo = 0xffffffffu;
    var end = 0u;
    for (var r = 0u; r < nr; r++) {
        let b = row_keys(sq, i0 + r, s);
        if (b.y > b.x) {
            lo = min(lo, b.x);
            end = max(end, b.y);
        }
    }
    if (li < nr) {
        let b = row_keys(sq, i0 + li, s);
        glo[li] = b.x;
        ghi[li] = b.y;
    }
    for (var t0 = lo; t0 < end; t0 += tile) {
        let count = min(tile, end - t0);
        // (Also publishes glo / ghi before the first tile reads them.)
        workgroupBarrier();
        for (var q = li; q < count * d; q += WG) {
            gkv[q] = k_in[(kv0 + t0 + q / d) * kv_width() + koff + q % d];
        }
        workgroupBarrier();
        for (var q = li; q < pairs * count; q += WG) {
            let pr = q / count;
            let t = q % count;
            let r = pr / g;
            if (t0 >= glo[r] && t0 + t < ghi[r]) {
                var dot = 0.0;
                for (var j = 0u; j < d; j++) {
                    dot += gq[pr * d + j] * gkv[t * d + j];
                }
                gp[pr * tile + t] = dot * p.scale;
            }
        }
        workgroupBarrier();
        if (li < pairs) {
            let r = li / g;
            let c = select(0u, min(tile, ghi[r] - t0), t0 >= glo[r] && ghi[r] > t0);
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
            gkv[q] = v_in[(kv0 + t0 + q / d) * kv_width() + koff + q % d];
        }
        workgroupBarrier();
        for (var h = 0u; h < PAIRS_MAX; h++) {
            if (h < pairs && gc[h] > 0u) {
                let c = gc[h];
                let f = gf[h];
                for (var r = 0u; r < 4u; r++) {
                    let j = li + WG * r;
                    if (j < d) {
                        var a = (*acc)[4u * h + r] * f;
                        for (var t = 0u; t < c; t++) {
                            a += gp[h * tile + t] * gkv[t * d + j];
                        }
                        (*acc)[4u * h + r] = a;
                    }
                }
            }
        }
    }
    workgroupBarrier();
}

// This workgroup's KV head, first query head and how many it takes, from its group index.
fn head_group(gi: u32) -> vec3<u32> {
    let per_kv = p.heads_q / p.heads_kv;
    let groups = (per_kv + p.group_heads - 1u) / p.group_heads;
    let hk = gi / groups;
    let h0 = hk * per_kv + (gi % groups) * p.group_heads;
    return vec3<u32>(hk, h0, min(p.group_heads, (hk + 1u) * per_kv - h0));
}

// x: (KV head, group of its query heads), y: blocks of tile_rows rows of one sequence. Returns
// the rows and heads it wrote: (first row, rows, first query head, heads); no rows past the
// last block.
fn attention_block(wg: vec3<u32>, li: u32) -> vec4<u32> {
    let hg = head_group(wg.x);
    let g = hg.z;
    let blk = seq_block(wg.y, p.tile_rows);
    let i0 = blk.x;
    let nr = blk.y;
    if (nr == 0u) {
        return vec4<u32>(0u);
    }
    let sq = st.seq[blk.z];
    load_queries(li, i0, nr, hg.y, g);
    var acc: array<f32, 64>;
    attend_keys(li, sq, i0, nr, g, hg.x, WHOLE, &acc);
    let d = p.d;
    for (var h = 0u; h < PAIRS_MAX; h++) {
        if (h < nr * g) {
            let l = gl[h];
            let ob = (i0 + h / g) * p.heads_q * d + (hg.y + h % g) * d;
            for (var r = 0u; r < 4u; r++) {
                let j = li + WG * r;
                if (j < d) {
                    out[ob + j] = acc[4u * h + r] / l;
                }
            }
        }
    }
    return vec4<u32>(i0, nr, hg.y, g);
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    attention_block(wg, li);
}

// Split-KV: a row's visible keys as up to S_MAX ranges of at least SPLIT_KEYS (whole tiles but
// the last), a function of what the row sees only, so a row splits the same way alone and in
// any batch.
const S_MAX: u32 = 8u;
const SPLIT_KEYS: u32 = 512u;

// (ranges, keys per range) of a row that sees `visible` keys.
fn key_ranges(visible: u32) -> vec2<u32> {
    let tile = key_tile();
    let s = clamp((visible + SPLIT_KEYS - 1u) / SPLIT_KEYS, 1u, S_MAX);
    let per = ((visible + s - 1u) / s + tile - 1u) / tile * tile;
    return vec2<u32>((visible + per - 1u) / per, per);
}

// Where the partial of (row i, query head h, range s) starts in `parts`.
fn part_at(i: u32, h: u32, s: u32) -> u32 {
    return ((i * p.heads_q + h) * S_MAX + s) * (p.d + 2u);
}

// x: (group of query heads, range), y: blocks of split_rows rows of one sequence (as
// `attention`: each K/V tile read once for all of them). Per (row, head) the partial
// (unnormalised values, max, sum) over the row's range of its keys; ranges past the block's
// last return (its last row sees the most keys, so has the most ranges).
@compute @workgroup_size(64)
fn attention_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let hg = head_group(wg.x / S_MAX);
    let s = wg.x % S_MAX;
    let g = hg.z;
    let blk = seq_block(wg.y, p.split_rows);
    let i0 = blk.x;
    let nr = blk.y;
    if (nr == 0u) {
        return;
    }
    let sq = st.seq[blk.z];
    if (s >= key_ranges(visible_keys(sq, i0 + nr - 1u)).x) {
        return;
    }
    load_queries(li, i0, nr, hg.y, g);
    var acc: array<f32, 64>;
    attend_keys(li, sq, i0, nr, g, hg.x, s, &acc);
    let d = p.d;
    for (var h = 0u; h < PAIRS_MAX; h++) {
        if (h < nr * g) {
            let i = i0 + h / g;
            if (s < key_ranges(visible_keys(sq, i)).x) {
                let at = part_at(i, hg.y + h % g, s);
                for (var r = 0u; r < 4u; r++) {
                    let j = li + WG * r;
                    if (j < d) {
                        parts[at + j] = acc[4u * h + r];
                    }
                }
                if (li == 0u) {
                    parts[at + d] = gm[h];
                    parts[at + d + 1u] = gl[h];
                }
            }
        }
    }
}

// x: query head, y: row. The ranges' partials merged in range order: each rescaled to the
// largest max, values and sums added, then divided.
fn attention_combine_row(wg: vec3<u32>, li: u32) {
    let h = wg.x;
    let i = wg.y;
    let d = p.d;
    let sq = st.seq[seq_of_row(i)];
    let n = key_ranges(visible_keys(sq, i)).x;
    var m = neg_inf();
    for (var s = 0u; s < n; s++) {
        m = max(m, parts[part_at(i, h, s) + d]);
    }
    var l = 0.0;
    for (var s = 0u; s < n; s++) {
        let at = part_at(i, h, s);
        l += exp(parts[at + d] - m) * parts[at + d + 1u];
    }
    for (var j = li; j < d; j += WG) {
        var a = 0.0;
        for (var s = 0u; s < n; s++) {
            let at = part_at(i, h, s);
            a += exp(parts[at + d] - m) * parts[at + j];
        }
        out[(i * p.heads_q + h) * d + j] = a / l;
    }
}

@compute @workgroup_size(64)
fn attention_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    attention_combine_row(wg, li);
}

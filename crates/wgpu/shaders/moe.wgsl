// Mixture of experts on the device, without a host round trip (SPEC §2):
// - `moe_route`: per token, sigmoid scores, bias for the choice only, group-limited top-k,
//   normalised and scaled weights; `moe_route_logits` computes the router product first.
// - `moe_route_block`: LLaDA2.2's block routing (SPEC §3c), a workgroup per routing block: the
//   `capacity` experts with the largest block maximum of the biased score are allowed, each
//   token takes its top-k among them.
// - `moe_group`: counts the tokens of each expert, lays their slots out expert by expert (a
//   workgroup scan), and writes the work items and indirect dispatch arguments of the expert
//   kernels (matmul.wgsl's tiles and matvec/experts.wgsl's matrix-vector form). The plan
//   buffer, for c expert dispatches: arguments of the tiled gate/up [0, 3c) and down [3c, 6c),
//   of the matrix-vector gate/up [6c, 9c) and down [9c, 12c), then each dispatch's first work
//   item [12c, 13c), then the work items (expert, first slot, rows) from `items_at`.
// - `moe_combine`: per token, the weighted sum of its experts' outputs in ascending expert order
//   (the reference's order), then the shared expert's output when the stack holds it, then the
//   residual add and the next norm when the block's residual op is absorbed (fuse.rs).

struct RouteParams {
    e: u32,
    top_k: u32,
    n_group: u32,
    topk_group: u32,
    scaling: f32,
    has_bias: u32,
    // moe_route_block: experts allowed per routing block, and its length in tokens;
    // moe_route_logits: 0 and the router's input width.
    capacity: u32,
    block_size: u32,
}

struct GroupParams {
    e: u32,
    top_k: u32,
    // Dispatches of each expert kernel (each reads one or more stack bindings); `bounds` holds
    // their first experts (+ the end).
    chunks: u32,
    // 1: the stack's last expert is the shared one, taken by every token after its routed ones.
    has_shared: u32,
    // x of the gate/up and the down kernels' indirect dispatches: the tiles' feature tiles in
    // the low half, the matrix-vector kernels' feature groups in the high half (an x extent
    // never exceeds 65535 workgroups).
    gate_up_x: u32,
    down_x: u32,
    // Where the work items start in `plan`, and the slot capacity (offset of `slot_of`).
    items_at: u32,
    slot_cap: u32,
}

struct CombineParams {
    h: u32,
    top_k: u32,
    slot_cap: u32,
    // 1: add the shared expert's row (entry n * top_k + t) after the routed sum.
    has_shared: u32,
    // moe_combine_residual: 1 writes skip + output (the residual add); 2 that sum and its
    // RMS norm (weight `norm_w`, eps) into `normed`, as add_rms_norm computes them.
    residual: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

// moe_route
@group(0) @binding(0) var<storage, read> rp: RouteParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> route_ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> route_weights: array<f32>;
// moe_route_logits: the router's input rows, its weight widened to f32, and the logits.
@group(0) @binding(6) var<storage, read> router_x: array<f32>;
@group(0) @binding(7) var<storage, read> router_w: array<f32>;
@group(0) @binding(8) var<storage, read_write> logits_out: array<f32>;

// moe_group
@group(0) @binding(10) var<storage, read> gp: GroupParams;
@group(0) @binding(11) var<storage, read> ids: array<u32>;
@group(0) @binding(12) var<storage, read> bounds: array<u32>;
// [0, e): tokens per expert; [e, 2e): scatter cursors; [2e, 3e): first slot of each expert;
// [3e, 4e]: first work item of each expert, then the total.
@group(0) @binding(13) var<storage, read_write> counters: array<atomic<u32>>;
// [0, slot_cap): token of each slot; [slot_cap, 2 slot_cap): slot of each (token, k) entry.
@group(0) @binding(14) var<storage, read_write> slots: array<u32>;
// Indirect arguments (gate/up then down, 3 words per chunk), first item per chunk, then items.
@group(0) @binding(15) var<storage, read_write> plan: array<u32>;

// moe_combine
@group(0) @binding(20) var<storage, read> cp: CombineParams;
@group(0) @binding(21) var<storage, read> weights: array<f32>;
@group(0) @binding(22) var<storage, read> slot_of: array<u32>;
@group(0) @binding(23) var<storage, read> y: array<f32>;
@group(0) @binding(24) var<storage, read_write> out: array<f32>;
@group(0) @binding(25) var<storage, read> skip: array<f32>;
@group(0) @binding(26) var<storage, read> norm_w: array<f32>;
@group(0) @binding(27) var<storage, read_write> normed: array<f32>;

const NONE: u32 = 0xffffffffu;
// Rows per expert work item: the expert kernels' tile height (BM in matmul.wgsl).
const BM: u32 = 32u;
const MAX_GROUPS: u32 = 64u;

fn neg_inf() -> f32 {
    // Through a variable: Chrome's WGSL compiler (Tint) rejects -inf as a constant expression.
    var bits = 0xff800000u;
    return bitcast<f32>(bits);
}

// Whether (v, i) may follow (pv, pi) in the order "value descending, then index ascending".
fn after(v: f32, i: u32, pv: f32, pi: u32) -> bool {
    return pi == NONE || v < pv || (v == pv && i > pi);
}

// Token t's score for expert j into `scores`, per-token scratch [s (e values), s + bias (e
// values)].
fn score(t: u32, j: u32, logit: f32) {
    let e = rp.e;
    let s = 1.0 / (1.0 + exp(-logit));
    var b = 0.0;
    if (rp.has_bias == 1u) {
        b = bias[j];
    }
    scores[t * 2u * e + j] = s;
    scores[t * 2u * e + e + j] = s + b;
}

// A workgroup per token: invocation li scores experts li, li + 64, ..., then the workgroup
// picks the token's experts.
@compute @workgroup_size(64)
fn moe_route(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x;
    for (var j = li; j < rp.e; j += 64u) {
        score(t, j, logits[t * rp.e + j]);
    }
    storageBarrier();
    workgroupBarrier();
    select_experts(li, t);
}

// The router product fused in: a workgroup per token; invocation li computes the logits of
// experts li, li + 64, ... (a dot product in column order, as the matmul kernels accumulate),
// writes them (`logits_out`, for whoever reads them later) and their scores, then the
// workgroup picks the token's experts.
@compute @workgroup_size(64)
fn moe_route_logits(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x;
    let e = rp.e;
    let h = rp.block_size;
    for (var j = li; j < e; j += 64u) {
        var acc = 0.0;
        for (var c = 0u; c < h; c++) {
            acc += router_x[t * h + c] * router_w[j * h + c];
        }
        logits_out[t * e + j] = acc;
        score(t, j, acc);
    }
    storageBarrier();
    workgroupBarrier();
    select_experts(li, t);
}

// Token t's experts from its scores, by the workgroup: group-limited top-k by biased score,
// weights from the unbiased ones. The groups (few) are chosen by invocation 0; each of the
// top_k picks is a workgroup argmax (every invocation scans experts li, li + 64, ..., then a
// tree keeps the largest value, ties to the lower id: the pick the reference's scan in id
// order makes). A NaN score breaks that order (the scan keeps a NaN it meets first), so a token
// with one is picked by invocation 0 alone, as the reference scans.
fn select_experts(li: u32, t: u32) {
    if (li == 0u) {
        route_kept = kept_groups(t);
    }
    let kept = workgroupUniformLoad(&route_kept);
    let e = rp.e;
    let sc = t * 2u * e;
    var nan = 0u;
    for (var j = li; j < e; j += 64u) {
        let v = scores[sc + e + j];
        nan |= select(0u, 1u, v != v);
    }
    route_i[li] = nan;
    for (var h = 32u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            route_i[li] |= route_i[li + h];
        }
    }
    if (workgroupUniformLoad(&route_i[0]) != 0u) {
        if (li == 0u) {
            pick_in_order(t, kept);
        }
        return;
    }
    var pv = 0.0;
    var pi = NONE;
    var sum = 0.0;
    for (var r = 0u; r < rp.top_k; r++) {
        var bv = 0.0;
        var bi = NONE;
        for (var j = li; j < e; j += 64u) {
            let v = kept_score(sc, kept, j);
            if (after(v, j, pv, pi) && (bi == NONE || v > bv)) {
                bv = v;
                bi = j;
            }
        }
        workgroupBarrier();
        route_v[li] = bv;
        route_i[li] = bi;
        for (var h = 32u; h > 0u; h >>= 1u) {
            workgroupBarrier();
            if (li < h) {
                let ov = route_v[li + h];
                let oi = route_i[li + h];
                if (pair_wins(ov, oi, route_v[li], route_i[li])) {
                    route_v[li] = ov;
                    route_i[li] = oi;
                }
            }
        }
        bi = workgroupUniformLoad(&route_i[0]);
        bv = route_v[0];
        // No pick (every expert already taken): expert 0, as in pick_in_order.
        if (bi == NONE) {
            bi = 0u;
            bv = 0.0;
        }
        if (li == 0u) {
            route_ids[t * rp.top_k + r] = bi;
        }
        sum += scores[sc + bi];
        pv = bv;
        pi = bi;
    }
    if (li == 0u) {
        route_weigh(t, sum);
    }
}

// The token's topk_group best groups (the sum of the up to two largest biased scores of
// each), as a bit mask.
fn kept_groups(t: u32) -> vec2<u32> {
    let e = rp.e;
    let sc = t * 2u * e;
    let gs = e / rp.n_group;
    var group_score: array<f32, MAX_GROUPS>;
    for (var g = 0u; g < rp.n_group; g++) {
        var m1 = neg_inf();
        var m2 = neg_inf();
        var n = 0u;
        for (var j = 0u; j < gs; j++) {
            let v = scores[sc + e + g * gs + j];
            if (n == 0u || v > m1) {
                m2 = m1;
                m1 = v;
            } else if (n == 1u || v > m2) {
                m2 = v;
            }
            n = min(n + 1u, 2u);
        }
        var total = m1;
        if (gs >= 2u) {
            total += m2;
        }
        group_score[g] = total;
    }
    // The topk_group best groups, as a bit mask.
    var kept = vec2<u32>(0u);
    var pv = 0.0;
    var pi = NONE;
    for (var r = 0u; r < rp.topk_group; r++) {
        var bv = 0.0;
        var bi = NONE;
        for (var g = 0u; g < rp.n_group; g++) {
            let v = group_score[g];
            if (after(v, g, pv, pi) && (bi == NONE || v > bv)) {
                bv = v;
                bi = g;
            }
        }
        if (bi == NONE) {
            break;
        }
        kept[bi / 32u] |= 1u << (bi % 32u);
        pv = bv;
        pi = bi;
    }
    return kept;
}

// The top_k experts by biased score among the kept groups (others count as -inf), scanned in
// id order by one invocation, and their weights.
fn pick_in_order(t: u32, kept: vec2<u32>) {
    let e = rp.e;
    let sc = t * 2u * e;
    var pv = 0.0;
    var pi = NONE;
    var sum = 0.0;
    for (var r = 0u; r < rp.top_k; r++) {
        var bv = 0.0;
        var bi = NONE;
        for (var j = 0u; j < e; j++) {
            let v = kept_score(sc, kept, j);
            if (after(v, j, pv, pi) && (bi == NONE || v > bv)) {
                bv = v;
                bi = j;
            }
        }
        // A NaN score (NaN or Inf in weights or activations) is never `after` anything, so no
        // pick may be left: take expert 0, as the CUDA kernel does, so that every id indexes
        // inside the tables (the modules run without naga's bounds checks).
        if (bi == NONE) {
            bi = 0u;
        }
        route_ids[t * rp.top_k + r] = bi;
        sum += scores[sc + bi];
        pv = bv;
        pi = bi;
    }
    route_weigh(t, sum);
}

// Expert j's biased score in the token's scores at `sc`, or -inf outside the kept groups.
fn kept_score(sc: u32, kept: vec2<u32>, j: u32) -> f32 {
    let g = j / (rp.e / rp.n_group);
    if ((kept[g / 32u] & (1u << (g % 32u))) != 0u) {
        return scores[sc + rp.e + j];
    }
    return neg_inf();
}

// Weights from the unbiased scores of the token's picks, which sum to `sum`.
fn route_weigh(t: u32, sum: f32) {
    let sc = t * 2u * rp.e;
    for (var r = 0u; r < rp.top_k; r++) {
        let s = scores[sc + route_ids[t * rp.top_k + r]];
        route_weights[t * rp.top_k + r] = s / (sum + 1e-20) * rp.scaling;
    }
}

// select_experts' scratch: the kept groups, and a tree of (value, id) pairs.
var<workgroup> route_kept: vec2<u32>;
var<workgroup> route_v: array<f32, 64>;
var<workgroup> route_i: array<u32, 64>;

// Block routing scratch: per expert, the block maximum and whether it is allowed.
const MAX_ROUTED_EXPERTS: u32 = 1024u;
var<workgroup> block_max: array<f32, MAX_ROUTED_EXPERTS>;
var<workgroup> block_allowed: array<u32, MAX_ROUTED_EXPERTS>;

// One workgroup per routing block of the pass, counted sequence by sequence (each sequence's
// rows start on a routing block boundary of its own positions); the grid may hold a few more.
@compute @workgroup_size(64)
fn moe_route_block(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = rp.e;
    let blk = seq_block(wg.x, rp.block_size);
    let first = blk.x;
    let rows = blk.y;
    // Scores of every (token, expert) of the block: [s, s + bias] per token, as moe_route.
    for (var q = li; q < rows * e; q += 64u) {
        let t = first + q / e;
        let j = q % e;
        let s = 1.0 / (1.0 + exp(-logits[t * e + j]));
        var b = 0.0;
        if (rp.has_bias == 1u) {
            b = bias[j];
        }
        scores[t * 2u * e + j] = s;
        scores[t * 2u * e + e + j] = s + b;
    }
    storageBarrier();
    workgroupBarrier();
    for (var j = li; j < e; j += 64u) {
        var m = neg_inf();
        for (var r = 0u; r < rows; r++) {
            m = max(m, scores[(first + r) * 2u * e + e + j]);
        }
        block_max[j] = m;
    }
    workgroupBarrier();
    // An expert is allowed if fewer than `capacity` experts come before it (value descending,
    // ties to the lower id).
    for (var j = li; j < e; j += 64u) {
        let v = block_max[j];
        var rank = 0u;
        for (var k = 0u; k < e; k++) {
            let w = block_max[k];
            if (w > v || (w == v && k < j)) {
                rank++;
            }
        }
        block_allowed[j] = select(0u, 1u, rank < rp.capacity);
    }
    workgroupBarrier();
    for (var r = li; r < rows; r += 64u) {
        let t = first + r;
        let sc = t * 2u * e;
        var pv = 0.0;
        var pi = NONE;
        var sum = 0.0;
        for (var k = 0u; k < rp.top_k; k++) {
            var bv = 0.0;
            var bi = NONE;
            for (var j = 0u; j < e; j++) {
                var v = neg_inf();
                if (block_allowed[j] == 1u) {
                    v = scores[sc + e + j];
                }
                if (after(v, j, pv, pi) && (bi == NONE || v > bv)) {
                    bv = v;
                    bi = j;
                }
            }
            // No pick (NaN scores): expert 0, as in moe_route.
            if (bi == NONE) {
                bi = 0u;
            }
            route_ids[t * rp.top_k + k] = bi;
            sum += scores[sc + bi];
            pv = bv;
            pi = bi;
        }
        for (var k = 0u; k < rp.top_k; k++) {
            let s = scores[sc + route_ids[t * rp.top_k + k]];
            route_weights[t * rp.top_k + k] = s / (sum + 1e-20) * rp.scaling;
        }
    }
}

// Entry i of the pass: (token, expert). The routed entries are `ids`, token-major; with a
// shared expert, entry n * top_k + t is token t's turn with it (the stack's last expert).
fn entry(i: u32) -> vec2<u32> {
    let routed = st.n * gp.top_k;
    if (i < routed) {
        return vec2<u32>(i / gp.top_k, ids[i]);
    }
    return vec2<u32>(i - routed, gp.e - 1u);
}

const GWG: u32 = 256u;
// moe_group's scan: per invocation, the slots and the work items of its experts.
var<workgroup> scan_slots: array<u32, GWG>;
var<workgroup> scan_items: array<u32, GWG>;

// One workgroup for the whole pass. Invocation li owns a contiguous range of experts: their
// counts, then their first slots and work items from a workgroup scan (no invocation walks
// every expert), then the chunks' dispatch arguments.
@compute @workgroup_size(256)
fn moe_group(@builtin(local_invocation_index) li: u32) {
    let e = gp.e;
    let entries = st.n * (gp.top_k + gp.has_shared);
    for (var j = li; j < 2u * e; j += GWG) {
        atomicStore(&counters[j], 0u);
    }
    storageBarrier();
    for (var i = li; i < entries; i += GWG) {
        atomicAdd(&counters[entry(i).y], 1u);
    }
    storageBarrier();
    let per = (e + GWG - 1u) / GWG;
    let e0 = min(li * per, e);
    let e1 = min(e0 + per, e);
    var own_slots = 0u;
    var own_items = 0u;
    for (var ex = e0; ex < e1; ex++) {
        let count = atomicLoad(&counters[ex]);
        own_slots += count;
        own_items += (count + BM - 1u) / BM;
    }
    // Inclusive scan (Hillis-Steele), then each invocation's exclusive start.
    scan_slots[li] = own_slots;
    scan_items[li] = own_items;
    for (var off = 1u; off < GWG; off <<= 1u) {
        workgroupBarrier();
        var a = 0u;
        var b = 0u;
        if (li >= off) {
            a = scan_slots[li - off];
            b = scan_items[li - off];
        }
        workgroupBarrier();
        scan_slots[li] += a;
        scan_items[li] += b;
    }
    var slot = scan_slots[li] - own_slots;
    var item = scan_items[li] - own_items;
    // [3e, 4e]: the first work item of each expert, and the total.
    for (var ex = e0; ex < e1; ex++) {
        let count = atomicLoad(&counters[ex]);
        atomicStore(&counters[2u * e + ex], slot);
        atomicStore(&counters[3u * e + ex], item);
        for (var r = 0u; r < count; r += BM) {
            let o = gp.items_at + 3u * item;
            plan[o] = ex;
            plan[o + 1u] = slot + r;
            plan[o + 2u] = min(BM, count - r);
            item += 1u;
        }
        slot += count;
    }
    if (e1 == e) {
        atomicStore(&counters[4u * e], item);
    }
    storageBarrier();
    let c = gp.chunks;
    for (var ch = li; ch < c; ch += GWG) {
        let first = atomicLoad(&counters[3u * e + bounds[ch]]);
        let items = atomicLoad(&counters[3u * e + bounds[ch + 1u]]) - first;
        plan[12u * c + ch] = first;
        // Per kernel (tiled gate/up, tiled down, matrix-vector gate/up, down): x, y, z.
        for (var kernel = 0u; kernel < 4u; kernel++) {
            let packed = select(gp.gate_up_x, gp.down_x, kernel % 2u == 1u);
            let o = 3u * (kernel * c + ch);
            plan[o] = select(packed & 0xffffu, packed >> 16u, kernel >= 2u);
            plan[o + 1u] = items;
            plan[o + 2u] = 1u;
        }
    }
    for (var i = li; i < entries; i += GWG) {
        let en = entry(i);
        let ex = en.y;
        let slot = atomicLoad(&counters[2u * e + ex]) + atomicAdd(&counters[e + ex], 1u);
        slots[slot] = en.x;
        slots[gp.slot_cap + i] = slot;
    }
}

// The combine's workgroup (256: sum256's width) and the token's entries in ascending expert
// order (the reference's sum order).
const CWG: u32 = 256u;
const MAX_TOP_K: u32 = 64u;
var<workgroup> order: array<u32, MAX_TOP_K>;

// Fills `order` with token t's entries in ascending expert id (one invocation; all wait).
fn order_experts(t: u32, li: u32) {
    let k = cp.top_k;
    if (li == 0u) {
        var prev = NONE;
        for (var r = 0u; r < k; r++) {
            var best = NONE;
            var bj = 0u;
            for (var j = 0u; j < k; j++) {
                let ex = ids[t * k + j];
                if ((prev == NONE || ex > prev) && ex < best) {
                    best = ex;
                    bj = j;
                }
            }
            prev = best;
            order[r] = bj;
        }
    }
    workgroupBarrier();
}

// Column `col` of token t's block output: w * y[slot] over its experts in ascending id, then
// the shared expert's row.
fn block_output(t: u32, col: u32) -> f32 {
    let k = cp.top_k;
    var acc = 0.0;
    for (var r = 0u; r < k; r++) {
        let j = order[r];
        let slot = slot_of[cp.slot_cap + t * k + j];
        acc += weights[t * k + j] * y[slot * cp.h + col];
    }
    if (cp.has_shared == 1u) {
        let slot = slot_of[cp.slot_cap + st.n * k + t];
        acc += y[slot * cp.h + col];
    }
    return acc;
}

// y: tokens; invocation li owns columns li, li + 256, ...
@compute @workgroup_size(256)
fn moe_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.y;
    order_experts(t, li);
    for (var col = li; col < cp.h; col += CWG) {
        out[t * cp.h + col] = block_output(t, col);
    }
}

// The same, plus the residual: out = skip + block output, and with `residual` 2 its RMS norm
// into `normed`. The columns are add_rms_norm's split and the sum is its `sum256`, so the norm
// rounds as add_rms_norm's. Its own entry point: three more bindings
// than an adapter with 8 storage buffers a stage allows (load.rs fuses only above that).
fn combine_residual(t: u32, li: u32) {
    order_experts(t, li);
    let row = t * cp.h;
    var squares = 0.0;
    for (var col = li; col < cp.h; col += CWG) {
        let v = skip[row + col] + block_output(t, col);
        out[row + col] = v;
        squares += v * v;
    }
    if (cp.residual == 2u) {
        let r = 1.0 / sqrt(sum256(li, squares) / f32(cp.h) + cp.eps);
        for (var col = li; col < cp.h; col += CWG) {
            normed[row + col] = norm_w[col] * (out[row + col] * r);
        }
    }
}

@compute @workgroup_size(256)
fn moe_combine_residual(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    combine_residual(wg.y, li);
}

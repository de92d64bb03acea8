// Matrix products against packed weights: out[r, f] = sum_k x[r, k] * W[f, k] with f32
// accumulation. The weight format file provides `w_load4`, so one kernel body serves every
// format. Tiles of BM rows x BN output features, BK columns of the reduction at a time, staged in
// workgroup memory; each of the 128 invocations owns 2 rows x 4 features.
//
// - `matmul`: dense rows (a linear layer over the pass's tokens or its predicted rows).
// - `matvec8` / `matvec32` (matvec/matvec.wgsl): products over at most 8 or 32 rows, the
//   weights streamed once with the window's rows in registers.
// - `moe_gate_up`: per routed expert, the rows routed to it (gathered by token) times the
//   expert's stacked [gate; up] rows, writing silu(gate) * up.
// - `moe_down`: per routed expert, its activation rows times its down rows.
// The expert kernels are dispatched indirectly: `moe_group` (moe.wgsl) writes one work item per
// (expert, tile of at most BM of its rows), so each touched expert's weights are read once per BM
// of its rows (once per step for a 32-token window) and untouched experts are never read. A
// window routes only a few rows to most experts, so a tile computes only its groups of NR rows
// that hold routed rows. Their accumulators are indexed under compile-time loop bounds (the
// live groups are a uniform condition inside), so they stay in registers.

const BM: u32 = 32u;
const BN: u32 = 32u;
const BK: u32 = 32u;
// Row pitch of the tiles in workgroup memory (padded against bank conflicts).
const LD: u32 = 33u;

struct MatmulParams {
    // Reduction length (input features) and words per packed weight row.
    k: u32,
    stride: u32,
    // Weight rows in this binding; output row length; output column of this binding's row 0.
    m: u32,
    out_cols: u32,
    col0: u32,
    // 1: the rows are the pass's predicted rows (st.out_rows), else its tokens (st.n).
    rows_from_out: u32,
    _pad0: u32,
    _pad1: u32,
}

struct MoeMatmulParams {
    // Reduction length, words per packed row, output features per expert.
    k: u32,
    stride: u32,
    m: u32,
    // Packed rows per expert in the stack (2m for [gate; up], m for down).
    rows_per_expert: u32,
    // First expert of this dispatch's stack parts, and experts per part (binding): expert
    // e0 + i is in part i / per_part (`w`, `w_1`, ... through `we_load4`).
    e0: u32,
    // Where in `plan` this dispatch's first work item index is stored, and where items start.
    first_item_at: u32,
    items_at: u32,
    per_part: u32,
}

@group(0) @binding(0) var<storage, read> p: MatmulParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> mp: MoeMatmulParams;
@group(0) @binding(5) var<storage, read> plan: array<u32>;
@group(0) @binding(6) var<storage, read> slot_token: array<u32>;

var<workgroup> xs: array<f32, 1056>;   // BM * LD
var<workgroup> ws: array<f32, 2112>;   // 2 * BN * LD: one or two weight tiles

// W rows row_first .. row_first + valid (at most BN) into tile `t`, columns k0 .. k0 + BK.
fn load_w_tile(li: u32, t: u32, row_first: u32, valid: u32, k0: u32, k: u32, stride: u32) {
    for (var e = 0u; e < 2u; e++) {
        let idx = li + e * 128u;
        let c = idx / 8u;
        let q = idx % 8u;
        let c4 = k0 / 4u + q;
        var v = vec4<f32>(0.0);
        if (c < valid && 4u * c4 < k) {
            v = w_load4((row_first + c) * stride, c4);
        }
        let o = t * BN * LD + c * LD + 4u * q;
        ws[o] = v.x;
        ws[o + 1u] = v.y;
        ws[o + 2u] = v.z;
        ws[o + 3u] = v.w;
    }
}

// The same from an expert-stack part (`we_load4`): the dense kernels must not name the extra
// parts' bindings, so they keep `load_w_tile`.
fn load_we_tile(li: u32, t: u32, part: u32, row_first: u32, valid: u32, k0: u32) {
    for (var e = 0u; e < 2u; e++) {
        let idx = li + e * 128u;
        let c = idx / 8u;
        let q = idx % 8u;
        let c4 = k0 / 4u + q;
        var v = vec4<f32>(0.0);
        if (c < valid && 4u * c4 < mp.k) {
            v = we_load4(part, (row_first + c) * mp.stride, c4);
        }
        let o = t * BN * LD + c * LD + 4u * q;
        ws[o] = v.x;
        ws[o + 1u] = v.y;
        ws[o + 2u] = v.z;
        ws[o + 3u] = v.w;
    }
}

// Accumulates the staged tiles: acc[4i + j] += x[ty + 16i] * W_t[tx + 8j].
fn mac(acc: ptr<function, array<f32, 8>>, t: u32, tx: u32, ty: u32) {
    for (var kk = 0u; kk < BK; kk++) {
        let a0 = xs[ty * LD + kk];
        let a1 = xs[(ty + 16u) * LD + kk];
        for (var j = 0u; j < 4u; j++) {
            let b = ws[t * BN * LD + (tx + 8u * j) * LD + kk];
            (*acc)[j] += a0 * b;
            (*acc)[4u + j] += a1 * b;
        }
    }
}

// x: tiles of BN features, y: tiles of BM rows.
@compute @workgroup_size(128)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let rows = select(st.n, st.out_rows, p.rows_from_out == 1u);
    let f0 = wg.x * BN;
    let r0 = wg.y * BM;
    let valid_rows = min(BM, rows - r0);
    let valid_w = min(BN, p.m - f0);
    let tx = li % 8u;
    let ty = li / 8u;
    var acc: array<f32, 8>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = 0u; e < 8u; e++) {
            let idx = li + e * 128u;
            let r = idx / BK;
            let kk = idx % BK;
            var v = 0.0;
            if (r < valid_rows && k0 + kk < p.k) {
                v = x[(r0 + r) * p.k + k0 + kk];
            }
            xs[r * LD + kk] = v;
        }
        load_w_tile(li, 0u, f0, valid_w, k0, p.k, p.stride);
        workgroupBarrier();
        mac(&acc, 0u, tx, ty);
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        let r = ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let f = tx + 8u * j;
            if (r < valid_rows && f < valid_w) {
                out[(r0 + r) * p.out_cols + p.col0 + f0 + f] = acc[4u * i + j];
            }
        }
    }
}

// Expert tiles compute their routed rows NR at a time.
const NR: u32 = 8u;

// The work item of this workgroup: (expert, first slot, rows).
fn work_item(y: u32) -> vec3<u32> {
    let item = plan[mp.first_item_at] + y;
    let o = mp.items_at + 3u * item;
    return vec3<u32>(plan[o], plan[o + 1u], plan[o + 2u]);
}

// The stack part holding expert `ex`, and its first packed row there.
fn expert_at(ex: u32) -> vec2<u32> {
    let rel = ex - mp.e0;
    return vec2<u32>(rel / mp.per_part, (rel % mp.per_part) * mp.rows_per_expert);
}

// Loads the rows of a work item (at most BM) into the x tile: row r is `x` row s0 + r, or the
// token of slot s0 + r when gathering.
fn load_item_rows(li: u32, s0: u32, valid_rows: u32, k0: u32, gather: bool) {
    for (var e = 0u; e < 8u; e++) {
        let idx = li + e * 128u;
        let r = idx / BK;
        let kk = idx % BK;
        var v = 0.0;
        if (r < valid_rows && k0 + kk < mp.k) {
            var row = s0 + r;
            if (gather) {
                row = slot_token[row];
            }
            v = x[row * mp.k + k0 + kk];
        }
        xs[r * LD + kk] = v;
    }
}

// x: tiles of BN expert features, y: work items of this binding (indirect). Invocation li owns
// feature li % 32 of the tile and rows li / 32 + 4i, for both gate and up; only the groups of
// NR rows that hold routed rows are computed.
@compute @workgroup_size(128)
fn moe_gate_up(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let it = work_item(wg.y);
    let at = expert_at(it.x);
    let first_row = at.y;
    let s0 = it.y;
    let valid_rows = it.z;
    let live = 2u * ((valid_rows + NR - 1u) / NR);
    let f0 = wg.x * BN;
    let valid_w = min(BN, mp.m - f0);
    let tx = li % 32u;
    let ty = li / 32u;
    var g: array<f32, 8>;
    var u: array<f32, 8>;
    for (var k0 = 0u; k0 < mp.k; k0 += BK) {
        load_item_rows(li, s0, valid_rows, k0, true);
        load_we_tile(li, 0u, at.x, first_row + f0, valid_w, k0);
        load_we_tile(li, 1u, at.x, first_row + mp.m + f0, valid_w, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bg = ws[tx * LD + kk];
            let bu = ws[BN * LD + tx * LD + kk];
            for (var i = 0u; i < 8u; i++) {
                if (i < live) {
                    let a = xs[(ty + 4u * i) * LD + kk];
                    g[i] += a * bg;
                    u[i] += a * bu;
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        let r = ty + 4u * i;
        if (i < live && r < valid_rows && tx < valid_w) {
            let gv = g[i];
            out[(s0 + r) * mp.m + f0 + tx] = gv / (1.0 + exp(-gv)) * u[i];
        }
    }
}

// x: tiles of 2 BN output features, y: work items of this binding (indirect). Invocation li
// owns feature li % 64 of the tile and rows li / 64 + 2i; only the groups of NR rows that hold
// routed rows are computed.
@compute @workgroup_size(128)
fn moe_down(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let it = work_item(wg.y);
    let at = expert_at(it.x);
    let first_row = at.y;
    let s0 = it.y;
    let valid_rows = it.z;
    let live = 4u * ((valid_rows + NR - 1u) / NR);
    let f0 = wg.x * 2u * BN;
    let valid_w = min(2u * BN, mp.m - f0);
    let tx = li % 64u;
    let ty = li / 64u;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < mp.k; k0 += BK) {
        load_item_rows(li, s0, valid_rows, k0, false);
        load_we_tile(li, 0u, at.x, first_row + f0, min(BN, valid_w), k0);
        load_we_tile(li, 1u, at.x, first_row + f0 + BN, valid_w - min(BN, valid_w), k0);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let b = ws[tx * LD + kk];
            for (var i = 0u; i < 16u; i++) {
                if (i < live) {
                    acc[i] += xs[(ty + 2u * i) * LD + kk] * b;
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 16u; i++) {
        let r = ty + 2u * i;
        if (i < live && r < valid_rows && tx < valid_w) {
            out[(s0 + r) * mp.m + f0 + tx] = acc[i];
        }
    }
}

// The matrix-vector kernels (matvec/matvec.wgsl, instanced per row bound): invocations per
// workgroup, accumulators per invocation (rows x features), and the reduced totals.
const MV_WG: u32 = 64u;
const MV_ACC: u32 = 64u;
var<workgroup> mv_sum: array<f32, MV_ACC>;
// The expert matrix-vector kernels (matvec/experts.wgsl): gate/up and down features per
// workgroup, rows per block.
const EGU_FEATS: u32 = 4u;
const EDN_FEATS: u32 = 8u;
const E_ROWS: u32 = 8u;

// Columns 4 c4 .. 4 c4 + 3 of row r of `x` (rows of k values), zero past the row's end
// (activation rows are not padded; weight rows are, so the product there is zero).
fn x_run(r: u32, c4: u32, k: u32) -> vec4<f32> {
    let b = r * k + 4u * c4;
    if (4u * c4 + 3u < k) {
        return vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (4u * c4 + i < k) {
            v[i] = x[b + i];
        }
    }
    return v;
}

// The expert kernels in the matrix-vector mapping (matvec.wgsl's, over each work item's routed
// rows), for passes whose sequences have at most 32 rows: a window routes one to a few rows to
// most experts, which the tiles would stage as a 32-row tile. A workgroup of MV_WG invocations
// computes EGU_FEATS features of one work item (their gate and up rows) or EDN_FEATS output
// features, the item's rows E_ROWS at a time. Each invocation reads whole 4-value runs of every
// weight row it needs (invocation li run li, then li + MV_WG, ...: coalesced), and the rows x
// weight rows accumulators have compile-time bounds, so they stay in registers; `mv_reduce`
// adds the invocations' partial sums. A row is computed the same way in any block and item.
// Grid: feature groups in x (unpacked from moe_group's arguments), work items in y (indirect).
// Instanced like matvec.wgsl: f32 (suffix "") and integer (suffix "_q") forms.

@compute @workgroup_size(64)
fn moe_gate_up_mv{sfx}(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let it = work_item(wg.y);
    let at = expert_at(it.x);
    let f0 = wg.x * EGU_FEATS;
    if (it.z <= E_ROWS) {
        gate_up_mv_block{sfx}(li, at, f0, it.y, it.z);
    } else {
        // Apart, so that the common single block compiles as tightly as it can.
        for (var r0 = 0u; r0 < it.z; r0 += E_ROWS) {
            gate_up_mv_block{sfx}(li, at, f0, it.y + r0, min(E_ROWS, it.z - r0));
        }
    }
}

// Slots s0 .. s0 + rows (at most E_ROWS) of features f0 .. f0 + EGU_FEATS: row r's gate sums
// in accumulators 8 r + f, its up sums in 8 r + EGU_FEATS + f; silu(gate) * up written.
fn gate_up_mv_block{sfx}(li: u32, at: vec2<u32>, f0: u32, s0: u32, rows: u32) {
    var acc: array<f32, MV_ACC>;
    let runs = (mp.k + 3u) / 4u;
    for (var c4 = li; c4 < runs; c4 += MV_WG) {
        var wv: array<{wrun}, 8>;
        for (var f = 0u; f < EGU_FEATS; f++) {
            if (f0 + f < mp.m) {
                wv[f] = we_{load}(at.x, (at.y + f0 + f) * mp.stride, c4);
                wv[EGU_FEATS + f] = we_{load}(at.x, (at.y + mp.m + f0 + f) * mp.stride, c4);
            }
        }
        for (var r = 0u; r < E_ROWS; r++) {
            if (r < rows) {
                let xv = {xrun}(slot_token[s0 + r], c4, mp.k);
                for (var j = 0u; j < 8u; j++) {
                    acc[8u * r + j] += {dot}(xv, wv[j]);
                }
            }
        }
    }
    mv_reduce(li, &acc);
    let r = li / EGU_FEATS;
    let f = li % EGU_FEATS;
    if (r < rows && f0 + f < mp.m) {
        let g = mv_sum[8u * r + f];
        out[(s0 + r) * mp.m + f0 + f] = g / (1.0 + exp(-g)) * mv_sum[8u * r + EGU_FEATS + f];
    }
}

@compute @workgroup_size(64)
fn moe_down_mv{sfx}(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let it = work_item(wg.y);
    let at = expert_at(it.x);
    let f0 = wg.x * EDN_FEATS;
    if (it.z <= E_ROWS) {
        down_mv_block{sfx}(li, at, f0, it.y, it.z);
    } else {
        for (var r0 = 0u; r0 < it.z; r0 += E_ROWS) {
            down_mv_block{sfx}(li, at, f0, it.y + r0, min(E_ROWS, it.z - r0));
        }
    }
}

// Slots s0 .. s0 + rows (at most E_ROWS) of output features f0 .. f0 + EDN_FEATS.
fn down_mv_block{sfx}(li: u32, at: vec2<u32>, f0: u32, s0: u32, rows: u32) {
    var acc: array<f32, MV_ACC>;
    let runs = (mp.k + 3u) / 4u;
    for (var c4 = li; c4 < runs; c4 += MV_WG) {
        var wv: array<{wrun}, EDN_FEATS>;
        for (var f = 0u; f < EDN_FEATS; f++) {
            if (f0 + f < mp.m) {
                wv[f] = we_{load}(at.x, (at.y + f0 + f) * mp.stride, c4);
            }
        }
        for (var r = 0u; r < E_ROWS; r++) {
            if (r < rows) {
                let xv = {xrun}(s0 + r, c4, mp.k);
                for (var f = 0u; f < EDN_FEATS; f++) {
                    acc[EDN_FEATS * r + f] += {dot}(xv, wv[f]);
                }
            }
        }
    }
    mv_reduce(li, &acc);
    let r = li / EDN_FEATS;
    let f = li % EDN_FEATS;
    if (r < rows && f0 + f < mp.m) {
        out[(s0 + r) * mp.m + f0 + f] = mv_sum[li];
    }
}

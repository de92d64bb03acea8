// Matrix-vector products for windows of at most {rows} rows (llama.cpp's mul_mat_vec), an
// instance of this template per (rows, features) pair (shaders.rs): a workgroup of MV_WG
// invocations computes {feats} output features. Each invocation reads whole 4-value runs of the
// features' weight rows (invocation li run li, then li + MV_WG, ...: consecutive invocations read
// consecutive words) and multiplies them with every row of the window; the rows x features
// accumulators have compile-time bounds, so they stay in registers. `mv_reduce` then adds the
// invocations' partial sums (a subgroup reduction where the device has subgroups, workgroup
// memory where it does not). Grid: features in x and y (x * y groups of {feats}).
// Instanced in two forms: f32 (`w_{load}` = w_load4 widening the weights, `{xrun}` = x_run, `{dot}` =
// dot) and, for q8_0 / q4 with `int8_dots`, integer (w_int4, xq_run, int_dot: matvec/int8.wgsl).
@compute @workgroup_size(64)
fn {name}(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let rows = select(st.n, st.out_rows, p.rows_from_out == 1u);
    let f0 = (wg.y * groups.x + wg.x) * {feats}u;
    if (rows <= {rows}u) {
        {name}_block(li, f0, 0u, rows);
    } else {
        // A batched pass may hold more than {rows} rows: they are computed {rows} at a time,
        // each row exactly as in a pass of its own (the same function; the weights of the
        // workgroup's features are read again per block, from cache). Apart, so that the
        // common single block compiles as tightly as before.
        for (var r0 = 0u; r0 < rows; r0 += {rows}u) {
            {name}_block(li, f0, r0, rows);
        }
    }
}

// Rows r0 .. min(r0 + {rows}, rows) of features f0 .. f0 + {feats}.
fn {name}_block(li: u32, f0: u32, r0: u32, rows: u32) {
    var acc: array<f32, MV_ACC>;
    let runs = (p.k + 3u) / 4u;
    for (var c4 = li; c4 < runs; c4 += MV_WG) {
        var wv: array<{wrun}, {feats}>;
        for (var f = 0u; f < {feats}u; f++) {
            if (f0 + f < p.m) {
                wv[f] = w_{load}((f0 + f) * p.stride, c4);
            }
        }
        for (var r = 0u; r < {rows}u; r++) {
            if (r0 + r < rows) {
                let xv = {xrun}(r0 + r, c4, p.k);
                for (var f = 0u; f < {feats}u; f++) {
                    acc[r * {feats}u + f] += {dot}(xv, wv[f]);
                }
            }
        }
    }
    mv_reduce(li, &acc);
    // Invocation li holds the total of (row r0 + li / {feats}, feature li % {feats}).
    let r = r0 + li / {feats}u;
    let f = li % {feats}u;
    if (r < rows && f0 + f < p.m) {
        out[r * p.out_cols + p.col0 + f0 + f] = mv_sum[li];
    }
}

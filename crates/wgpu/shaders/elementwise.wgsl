// Row-wise elementwise ops over [rows, cols] f32 buffers: residual add, SwiGLU activation, and
// the copy of the predicted (last) rows. x: column, y: row.

struct EwParams {
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> p: EwParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// out = a + b
@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.cols) {
        return;
    }
    let i = gid.y * p.cols + gid.x;
    out[i] = a[i] + b[i];
}

// out = silu(a) * b, silu(v) = v / (1 + exp(-v))
@compute @workgroup_size(256)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.cols) {
        return;
    }
    let i = gid.y * p.cols + gid.x;
    let g = a[i];
    out[i] = g / (1.0 + exp(-g)) * b[i];
}

// out[o] = the rows whose predictions are wanted: each sequence's last out_rows rows.
@compute @workgroup_size(256)
fn take_last_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.cols) {
        return;
    }
    let sq = st.seq[seq_of_out(gid.y)];
    let src = (sq.row0 + sq.rows - sq.out_rows + gid.y - sq.out0) * p.cols + gid.x;
    out[gid.y * p.cols + gid.x] = a[src];
}

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

// out[r] = a[n - out_rows + r]: the rows whose predictions are wanted.
@compute @workgroup_size(256)
fn take_last_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.cols) {
        return;
    }
    let src = (st.n - st.out_rows + gid.y) * p.cols + gid.x;
    out[gid.y * p.cols + gid.x] = a[src];
}

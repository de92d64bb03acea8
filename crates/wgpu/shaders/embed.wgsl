// Embedding lookup: out[i] = table[ids[i]]. A table larger than one binding is split into row
// ranges; each range is its own dispatch and writes only the tokens whose id falls inside it.
// Needs a weight format file (`w_load4`).

struct EmbedParams {
    // Row length of the table (the hidden size).
    cols: u32,
    // Words per packed table row.
    stride: u32,
    // This binding holds table rows row0 .. row0 + rows.
    row0: u32,
    rows: u32,
}

@group(0) @binding(0) var<storage, read> p: EmbedParams;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// x: groups of four columns, y: tokens.
@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = 4u * gid.x;
    let i = gid.y;
    if (i >= st.n || c >= p.cols) {
        return;
    }
    let id = ids[st.ids_offset + i];
    if (id < p.row0 || id - p.row0 >= p.rows) {
        return;
    }
    let v = w_load4((id - p.row0) * p.stride, gid.x);
    let o = i * p.cols + c;
    out[o] = v.x;
    if (c + 1u < p.cols) {
        out[o + 1u] = v.y;
    }
    if (c + 2u < p.cols) {
        out[o + 2u] = v.z;
    }
    if (c + 3u < p.cols) {
        out[o + 3u] = v.w;
    }
}

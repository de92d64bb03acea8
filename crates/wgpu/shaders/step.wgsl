// The values of one pass of a step, shared by every kernel: group 1, bound with a dynamic
// offset per pass so that all passes of a step fit in one command buffer. The header is core's
// `StepParams` (crates/core/src/step_params.rs), field for field; `seq` is core's `SeqParams`
// table, one entry per sequence of the pass (a batched pass holds the windows of several
// sequences; a row finds its own with `seq_of_row` / `seq_of_out`). Tests check both layouts.
// Read-only storage, not uniform (see `Bind::Params`). Kernels read the pass-wide `n`,
// `out_rows`, `ids_offset` and `seqs` of the header; everything that differs per sequence
// (positions, mask, cache slot, sampling) comes from its `Seq`.
struct StepParams {
    // The first sequence's values (core fills them; the kernels read its `Seq` instead).
    start: u32,
    block: u32,
    // Rows (tokens) of the pass, and its predicted rows: each sequence's last rows.
    n: u32,
    out_rows: u32,
    // Where this pass's token ids start in the ids buffer.
    ids_offset: u32,
    // The first sequence's values again (see `start`).
    first_out_pos: u32,
    rng_step: u32,
    seed_lo: u32,
    seed_hi: u32,
    temperature: f32,
    inv_temp: f32,
    top_k: u32,
    top_p: f32,
    mask_id: u32,
    valid_vocab: u32,
    // Sequences of this pass: the first `seqs` entries of `seq`.
    seqs: u32,
    seq: array<Seq, MAX_SEQS>,
}

const MAX_SEQS: u32 = 16u;

struct Seq {
    // Absolute position of the sequence's first row of this pass.
    start: u32,
    // Block length of its block-causal attention mask.
    block: u32,
    // Its rows: pass rows row0 .. row0 + rows, predicting its last out_rows, which are the
    // pass's predicted rows out0 .. out0 + out_rows.
    row0: u32,
    rows: u32,
    out0: u32,
    out_rows: u32,
    // Its KV-cache slot: positions kv_base .. of every layer's cache.
    kv_base: u32,
    // The counter-based RNG key: the decoder's step counter and the seed (two halves).
    rng_step: u32,
    seed_lo: u32,
    seed_hi: u32,
    // Sampling: temperature and 1 / temperature (used only by the seeded sampler), top-k
    // (0 = off), top-p (1 = off).
    temperature: f32,
    inv_temp: f32,
    top_k: u32,
    top_p: f32,
    // Never sampled: the mask id and every id >= valid_vocab.
    mask_id: u32,
    valid_vocab: u32,
}

@group(1) @binding(0) var<storage, read> st: StepParams;

// The sequence that pass row `r` belongs to (sequences hold consecutive rows, in order).
fn seq_of_row(r: u32) -> u32 {
    var s = 0u;
    for (var i = 1u; i < MAX_SEQS; i++) {
        if (i < st.seqs && st.seq[i].row0 <= r) {
            s = i;
        }
    }
    return s;
}

// The sequence that predicted row `o` of the pass belongs to.
fn seq_of_out(o: u32) -> u32 {
    var s = 0u;
    for (var i = 1u; i < MAX_SEQS; i++) {
        let q = st.seq[i];
        if (i < st.seqs && q.out0 <= o && o < q.out0 + q.out_rows) {
            s = i;
        }
    }
    return s;
}

// Block `b` of the pass's rows cut in blocks of `size`, from each sequence's first row (a block
// never spans two sequences): (its first pass row, its rows, its sequence). Rows is 0 past the
// last block (`Extent::Blocks` dispatches up to one more per sequence).
fn seq_block(b: u32, size: u32) -> vec3<u32> {
    var left = b;
    var found = vec3<u32>(0u, 0u, 0u);
    var done = false;
    for (var i = 0u; i < MAX_SEQS; i++) {
        if (i < st.seqs && !done) {
            let sq = st.seq[i];
            let blocks = (sq.rows + size - 1u) / size;
            if (left < blocks) {
                let first = sq.row0 + left * size;
                found = vec3<u32>(first, min(size, sq.row0 + sq.rows - first), i);
                done = true;
            } else {
                left -= blocks;
            }
        }
    }
    return found;
}

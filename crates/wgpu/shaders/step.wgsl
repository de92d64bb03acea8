// The values of one chunk (pass) of a step, shared by every kernel: group 1, bound with a
// dynamic offset per chunk so that all chunks of a step fit in one command buffer. The layout
// is core's `StepParams` (crates/core/src/step_params.rs), field for field; a test checks it.
// Read-only storage, not uniform (see `Bind::Params`).
struct StepParams {
    // Tokens in this chunk, at absolute positions start .. start + n.
    start: u32,
    // Block length of the block-causal attention mask.
    block: u32,
    n: u32,
    // Rows whose predictions are wanted: the chunk's last `out_rows` tokens.
    out_rows: u32,
    // Where this chunk's token ids start in the ids buffer.
    ids_offset: u32,
    // The step's first predicted position (unused here: rows know their own positions).
    first_out_pos: u32,
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
    _pad: u32,
}

@group(1) @binding(0) var<storage, read> st: StepParams;

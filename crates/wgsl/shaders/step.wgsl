// The values of one chunk of a step, shared by every kernel: group 1, bound with a dynamic
// offset per chunk so that all chunks of a step fit in one command buffer. Mirrors
// `StepParamsHost` in src/backend.rs. Read-only storage, not uniform (see `Bind::Params`).
struct StepParams {
    // Tokens in this chunk, at absolute positions start .. start + n.
    n: u32,
    start: u32,
    // Rows whose predictions are wanted: the chunk's last `out_rows` tokens.
    out_rows: u32,
    // Block length of the block-causal attention mask.
    block: u32,
    // Where this chunk's token ids start in the ids buffer.
    ids_offset: u32,
    // Sampling: 1 / temperature (used only by the seeded sampler), top-k (0 = off), top-p (1 = off).
    inv_temp: f32,
    top_k: u32,
    top_p: f32,
    // The counter-based RNG key: seed (two halves) and the decoder's step counter.
    seed_lo: u32,
    seed_hi: u32,
    rng_step: u32,
    // Never sampled: the mask id and every id >= valid_vocab.
    mask_id: u32,
    valid_vocab: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(1) @binding(0) var<storage, read> st: StepParams;

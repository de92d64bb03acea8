//! The boundary between the model-agnostic decoder and a device. A backend owns its weights,
//! its compiled graph and its KV cache; the decoder only sends token ids and reads back
//! (token, confidence) per predicted position.

use crate::error::{Error, Result};

/// How a step turns logits into one (token, confidence) per predicted row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// 0 = greedy (argmax, confidence = softmax probability of the whole row).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    pub seed: u64,
    /// Step counter of the decoder: part of the RNG key with the seed and the position.
    pub step: u32,
    /// Never produced: the mask token and padded ids (`>= valid_vocab`).
    pub mask: u32,
    pub valid_vocab: u32,
}

impl SampleParams {
    pub fn greedy(mask: u32, valid_vocab: u32) -> Self {
        SampleParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            step: 0,
            mask,
            valid_vocab,
        }
    }
}

/// What a step should hand back besides the samples (tests and debugging only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Capture {
    #[default]
    Samples,
    Logits,
    /// Logits plus the hidden states of `Graph::hidden`.
    Hidden,
}

/// One forward pass over a contiguous run of positions.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    /// Token ids at positions `start .. start + tokens.len()`.
    pub tokens: &'a [u32],
    /// Absolute position of `tokens[0]`. The KV cache must hold at least `start` positions;
    /// anything cached beyond `start` is discarded.
    pub start: usize,
    /// After the step the cache holds `start + keep` positions (the final ones of this window).
    pub keep: usize,
    /// Block length of the block-causal attention mask.
    pub block_length: usize,
    /// Predictions are made for the last `out_rows` tokens.
    pub out_rows: usize,
    pub sampling: SampleParams,
    pub capture: Capture,
}

impl Step<'_> {
    /// The checks every backend makes before a step: a non-empty window whose output rows and
    /// kept positions lie inside it, a start within the `cached` positions, a block length, token
    /// ids inside the `vocab`-row embedding table, and sampling parameters in range.
    pub fn check(&self, cached: usize, vocab: usize) -> Result<()> {
        let n = self.tokens.len();
        if n == 0 || self.out_rows == 0 || self.out_rows > n || self.keep > n {
            return Err(Error::Invalid(format!(
                "step over {n} tokens with {} output rows and keep {}",
                self.out_rows, self.keep
            )));
        }
        if self.start > cached {
            return Err(Error::Invalid(format!(
                "step starts at position {} but only {cached} positions are cached",
                self.start
            )));
        }
        if self.block_length == 0 {
            return Err(Error::Invalid("block length must be at least 1".into()));
        }
        if let Some(&t) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {t} is outside the embedding table ({vocab} rows)"
            )));
        }
        let p = &self.sampling;
        let temperature_ok = p.temperature.is_finite() && p.temperature >= 0.0;
        let top_p_ok = p.top_p > 0.0 && p.top_p <= 1.0;
        if !(temperature_ok && top_p_ok) {
            return Err(Error::Invalid(format!(
                "sampling parameters out of range: temperature {}, top_p {}",
                p.temperature, p.top_p
            )));
        }
        Ok(())
    }
}

/// Words per predicted row in the samples buffer: token, confidence bits, then `ranked`.
pub const SAMPLE_WORDS: usize = 5;

/// What a step reads back per predicted row. `ranked` serves the editing decoders (LLaDA2.2's
/// final round takes the best id other than DELETE/SPLIT, its anti-loop rule the best id other
/// than the current one): with at most two ids excluded, one of three always remains.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sampled {
    pub token: u32,
    pub confidence: f32,
    /// The three allowed ids with the largest logits, descending, ties to the lower id
    /// ([`NO_TOKEN`] where the vocabulary has fewer). Greedy: `ranked[0] == token`.
    pub ranked: [u32; 3],
}

/// Fills `ranked` where the vocabulary has fewer than three allowed ids.
pub const NO_TOKEN: u32 = u32::MAX;

impl Sampled {
    /// A greedy sample whose runners-up are unknown (tests and hand-made tables).
    pub fn new(token: u32, confidence: f32) -> Self {
        Sampled {
            token,
            confidence,
            ranked: [token, NO_TOKEN, NO_TOKEN],
        }
    }

    /// The best of `ranked` that is none of `excluded` (always found for two exclusions and a
    /// vocabulary of three allowed ids or more).
    pub fn best_except(&self, excluded: &[u32]) -> Option<u32> {
        self.ranked
            .iter()
            .copied()
            .find(|t| *t != NO_TOKEN && !excluded.contains(t))
    }

    pub fn to_words(&self) -> [u32; SAMPLE_WORDS] {
        let r = self.ranked;
        [self.token, self.confidence.to_bits(), r[0], r[1], r[2]]
    }

    /// Rows of a samples buffer read back from a device.
    pub fn from_words(words: &[u32]) -> Vec<Sampled> {
        words
            .chunks_exact(SAMPLE_WORDS)
            .map(|c| Sampled {
                token: c[0],
                confidence: f32::from_bits(c[1]),
                ranked: [c[2], c[3], c[4]],
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    pub samples: Vec<Sampled>,
    /// `[out_rows, vocab]` when captured.
    pub logits: Option<Vec<f32>>,
    /// One `[rows, hidden]` matrix per entry of `Graph::hidden` when captured.
    pub hidden: Vec<Vec<f32>>,
}

/// Counters a backend keeps about its last step, for `unmask bench`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepStats {
    pub dispatches: usize,
    pub submissions: usize,
    pub bytes_uploaded: usize,
    pub bytes_read_back: usize,
    pub allocations: usize,
    /// The step submitted commands recorded while the device ran the step before (wgpu).
    pub recorded_ahead: bool,
}

pub use crate::profile::KernelTime;

/// One sequence's step in a batch: `slot` names the KV cache it reads and writes (a backend
/// holds [`Backend::slots`] of them; slot 0 is the one `step`, `cached` and `reset` use).
#[derive(Debug, Clone)]
pub struct SlotStep<'a> {
    pub slot: usize,
    pub step: Step<'a>,
}

/// The checks of a batch before it runs: at least one step, each in its own slot below
/// `slots`, each valid for what its slot caches (`Step::check`).
pub fn check_batch(
    steps: &[SlotStep],
    slots: usize,
    cached: impl Fn(usize) -> usize,
    vocab: usize,
) -> Result<()> {
    if steps.is_empty() {
        return Err(Error::Invalid("an empty batch of steps".into()));
    }
    for (i, s) in steps.iter().enumerate() {
        if s.slot >= slots {
            return Err(Error::Invalid(format!(
                "a step for KV-cache slot {} of a backend with {slots}",
                s.slot
            )));
        }
        if steps[..i].iter().any(|o| o.slot == s.slot) {
            return Err(Error::Invalid(format!(
                "two steps of one batch share KV-cache slot {}",
                s.slot
            )));
        }
        s.step.check(cached(s.slot), vocab)?;
    }
    Ok(())
}

pub trait Backend {
    /// Human-readable device description ("cpu (2 threads)", an adapter name...).
    fn name(&self) -> String;
    fn step(&mut self, step: &Step) -> Result<StepOutput>;
    /// Whether this backend can run `op` of its graph: `Err(why)` where its kernels have a
    /// limit the op exceeds (the op suite prints "not supported (why)"). Loading a graph with
    /// such an op fails with the same reason.
    fn supports(&self, _op: &crate::graph::Op) -> std::result::Result<(), String> {
        Ok(())
    }
    /// Positions currently held in the KV cache.
    fn cached(&self) -> usize;
    /// Forgets the KV cache (a new sequence).
    fn reset(&mut self);
    /// KV caches the backend holds: sequences that can be stepped together in one
    /// [`Self::step_batch`] or kept for a later request to reuse. At least 1.
    fn slots(&self) -> usize {
        1
    }
    /// Positions held in the KV cache of `slot` (0 where the slot does not exist).
    fn cached_in(&self, slot: usize) -> usize {
        if slot == 0 {
            self.cached()
        } else {
            0
        }
    }
    /// Forgets the KV cache of `slot` and frees what it held where the backend can.
    fn reset_slot(&mut self, slot: usize) {
        if slot == 0 {
            self.reset()
        }
    }
    /// The steps of several sequences, each in its own slot, as one forward: the weights are
    /// read once for all their rows, each sequence attends to its own cache only and is
    /// sampled with its own parameters. A sequence's outputs are the ones `step` would give
    /// it alone (bit for bit: every kernel computes a row the same way whatever else the
    /// forward holds). One output per step, in order. A backend with one slot runs a batch
    /// of one.
    fn step_batch(&mut self, steps: &[SlotStep]) -> Result<Vec<StepOutput>> {
        check_batch(steps, self.slots(), |s| self.cached_in(s), usize::MAX)?;
        if steps.len() > 1 {
            return Err(Error::Invalid(format!(
                "{} runs one sequence at a time, not a batch of {}",
                self.name(),
                steps.len()
            )));
        }
        Ok(vec![self.step(&steps[0].step)?])
    }
    fn last_stats(&self) -> StepStats {
        StepStats::default()
    }
    /// The experts the last step routed to, one list per `MoeRoute` op in graph order, each
    /// `[rows * top_k]` ids (`unmask bench` counts the expert bytes a step must read). `None`
    /// where reading them back would cost the backend a transfer it does not otherwise make.
    fn last_routing(&self) -> Option<Vec<Vec<u32>>> {
        None
    }
    /// Bytes of device memory the backend holds now (weights, KV cache, arena), where it can tell.
    fn device_memory(&self) -> Option<u64> {
        None
    }
    /// Bytes per second of a large device-to-device copy (bytes read plus bytes written), measured
    /// now; `None` where the device is the host (the caller measures a host copy instead).
    fn measure_bandwidth(&mut self) -> Option<Result<f64>> {
        None
    }
    /// Runs `step` as `step` does, with every kernel timed (CUDA events, wgpu timestamp queries,
    /// the host clock on cpu), in the order they ran. `None` where the backend cannot time its
    /// kernels. Slower than `step` (each kernel waits on its timer): for `unmask bench
    /// --profile`, never for serving.
    fn profile_step(&mut self, _step: &Step) -> Option<Result<(StepOutput, Vec<KernelTime>)>> {
        None
    }
}

//! The steps a benchmark times. A window step is what the decoder runs most: `window` tokens
//! (half already committed, half still masked, as in the middle of a block) after a prompt whose
//! K/V are cached. The same step without the cache recomputes the prompt too, and the
//! autoregressive baseline is one token per forward under a causal mask (block length 1).

use super::source::BenchModel;
use anyhow::{Context, Result};
use std::time::Instant;
use unmask_core::backend::{Backend, Capture, SampleParams, Step, StepStats};
use unmask_core::synthetic::SplitMix;

/// English text for prompts of real models: what the tokens are matters for routing.
const TEXT: &str = "The tide came in slowly over the flat grey sand, filling the channels one \
by one until the whole bay shone like a sheet of hammered tin. Gulls walked along the edge of \
the water, and far out a single boat turned for home as the light began to fail. ";

pub struct Tokens {
    pub prompt: Vec<u32>,
    /// `window` ids: the first half text (or random) ids, the rest the mask id.
    pub window: Vec<u32>,
}

/// A prompt of `prompt_len` ids and a window after it: tokenized text for a model with a
/// tokenizer and real weights, seeded random ids otherwise.
pub fn tokens(m: &BenchModel, prompt_len: usize, window: usize, seed: u64) -> Result<Tokens> {
    let committed = window / 2;
    let want = prompt_len + committed;
    let ids = match (&m.tokenizer, m.random_weights) {
        (Some(tok), false) => {
            let once = tok.encode(TEXT).context("tokenizing the benchmark text")?;
            if once.is_empty() {
                anyhow::bail!("the tokenizer turned the benchmark text into no tokens");
            }
            once.iter().copied().cycle().take(want).collect()
        }
        _ => {
            let mut rng = SplitMix(seed);
            let mut out = Vec::with_capacity(want);
            while out.len() < want {
                let id = (rng.next_u64() % m.ids.valid_vocab as u64) as u32;
                if id != m.ids.mask && id != m.ids.eos {
                    out.push(id);
                }
            }
            out
        }
    };
    let mut window_ids = ids[prompt_len..].to_vec();
    window_ids.resize(window, m.ids.mask);
    Ok(Tokens {
        prompt: ids[..prompt_len].to_vec(),
        window: window_ids,
    })
}

/// Forgets the cache and runs the prompt through (keeping all of it); returns milliseconds.
pub fn prefill(
    backend: &mut dyn Backend,
    prompt: &[u32],
    block: usize,
    s: SampleParams,
) -> Result<f64> {
    backend.reset();
    if prompt.is_empty() {
        return Ok(0.0);
    }
    let t = Instant::now();
    backend.step(&Step {
        tokens: prompt,
        start: 0,
        keep: prompt.len(),
        block_length: block,
        out_rows: 1,
        sampling: s,
        capture: Capture::Samples,
    })?;
    Ok(ms_since(t))
}

/// A step over `tokens` at `start` that keeps nothing new, so it can be repeated as is.
pub fn repeatable_step<'a>(
    tokens: &'a [u32],
    start: usize,
    block: usize,
    out_rows: usize,
    s: SampleParams,
) -> Step<'a> {
    Step {
        tokens,
        start,
        keep: 0,
        block_length: block,
        out_rows,
        sampling: s,
        capture: Capture::Samples,
    }
}

pub struct Timed {
    /// Wall time of each timed step (warm-up excluded), milliseconds.
    pub ms: Vec<f64>,
    /// The backend's counters after the last timed step.
    pub stats: StepStats,
    /// The most buffer allocations any timed step made.
    pub max_allocations: usize,
    /// The expert choice of the last timed step, where the backend tells it.
    pub routing: Option<Vec<Vec<u32>>>,
}

/// Runs `step` `warmup` times untimed, then `iters` times timed.
pub fn time_step(
    backend: &mut dyn Backend,
    step: &Step,
    warmup: usize,
    iters: usize,
) -> Result<Timed> {
    for _ in 0..warmup {
        backend.step(step)?;
    }
    let mut ms = Vec::with_capacity(iters);
    let mut max_allocations = 0;
    let mut stats = StepStats::default();
    for _ in 0..iters {
        let t = Instant::now();
        backend.step(step)?;
        ms.push(ms_since(t));
        stats = backend.last_stats();
        max_allocations = max_allocations.max(stats.allocations);
    }
    Ok(Timed {
        ms,
        stats,
        max_allocations,
        routing: backend.last_routing(),
    })
}

pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::super::source::{synthetic, WeightFormat};
    use super::*;

    #[test]
    fn random_tokens_avoid_special_ids_and_end_in_masks() {
        let m = synthetic("tiny", Some(1), WeightFormat::Bf16, 1).unwrap();
        let t = tokens(&m, 40, 8, 5).unwrap();
        assert_eq!((t.prompt.len(), t.window.len()), (40, 8));
        assert!(t
            .prompt
            .iter()
            .all(|&i| i != m.ids.mask && i != m.ids.eos && i < m.ids.valid_vocab));
        assert!(t.window[..4].iter().all(|&i| i != m.ids.mask));
        assert!(t.window[4..].iter().all(|&i| i == m.ids.mask));
        // Seeded: the same seed gives the same prompt.
        assert_eq!(tokens(&m, 40, 8, 5).unwrap().prompt, t.prompt);
    }

    #[test]
    fn real_models_get_text_tokens() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-llada2");
        let m = super::super::source::from_dir(&dir, None).unwrap();
        let t = tokens(&m, 300, 32, 0).unwrap();
        let text = m.tokenizer.as_ref().unwrap().encode(TEXT).unwrap();
        assert_eq!(
            &t.prompt[..text.len().min(300)],
            &text[..text.len().min(300)]
        );
    }
}

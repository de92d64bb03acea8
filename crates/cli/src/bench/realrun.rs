//! A real decoding run through `generate()`: how many tokens a forward actually commits on a
//! prompt, the tokens per second that gives, and the time to the first committed token.

use super::source::BenchModel;
use super::workload::ms_since;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::time::Instant;
use unmask_core::decode::defaults::model_defaults;
use unmask_core::{generate, Backend, DecodeParams, Message};

/// The chat message real models without a golden file are asked.
const CHAT: &str = "Write a short poem about the sea.";

pub struct RealPrompt {
    pub ids: Vec<u32>,
    pub params: DecodeParams,
    /// Where the prompt comes from, in words.
    pub source: String,
}

/// The prompt of a real run: the first case of the model's `golden/generate.json` (its prompt
/// and decoding parameters), else a chat message with the model's defaults; for random weights,
/// the benchmark's random prompt. `gen_length` and `steps` override.
pub fn real_prompt(
    m: &BenchModel,
    random_prompt: &[u32],
    gen_length: Option<usize>,
    steps: Option<usize>,
) -> Result<RealPrompt> {
    let mut p = match &m.dir {
        Some(dir) => {
            let golden = dir.join("golden/generate.json");
            if let Some(case) = first_golden_case(&golden)? {
                case
            } else {
                let tok = m.tokenizer.as_ref().context("the model has no tokenizer")?;
                let ids = tok.encode_chat(&[Message {
                    role: "user".into(),
                    content: CHAT.into(),
                }])?;
                RealPrompt {
                    ids,
                    params: model_defaults(dir),
                    source: format!("chat message {CHAT:?} with the model's defaults"),
                }
            }
        }
        None => RealPrompt {
            ids: random_prompt.to_vec(),
            params: DecodeParams {
                gen_length: 32,
                ..DecodeParams::default()
            },
            source: format!(
                "{} random prompt ids; random weights, so tokens per forward says nothing \
                 about a trained model",
                random_prompt.len()
            ),
        },
    };
    if let Some(g) = gen_length {
        p.params.gen_length = g;
    }
    if let Some(s) = steps {
        p.params.steps = s;
    }
    p.params.validate()?;
    Ok(p)
}

fn first_golden_case(path: &std::path::Path) -> Result<Option<RealPrompt>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(case) = v.get("cases").and_then(|c| c.get(0)) else {
        return Ok(None);
    };
    let ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone())
        .with_context(|| format!("{}: prompt_ids", path.display()))?;
    let mut params = DecodeParams::default();
    let u = |k: &str| case.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let f = |k: &str| case.get(k).and_then(Value::as_f64).map(|x| x as f32);
    params.gen_length = u("gen_length").unwrap_or(params.gen_length);
    params.block_length = u("block_length").unwrap_or(params.block_length);
    params.steps = u("steps").unwrap_or(params.steps);
    params.threshold = f("threshold").unwrap_or(params.threshold);
    params.temperature = f("temperature").unwrap_or(params.temperature);
    params.eos_early_stop = case
        .get("eos_early_stop")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let name = case.get("name").and_then(Value::as_str).unwrap_or("?");
    Ok(Some(RealPrompt {
        ids,
        params,
        source: format!("golden case `{name}` of {}", path.display()),
    }))
}

#[derive(Debug, Clone, Serialize)]
pub struct RealRun {
    pub prompt_source: String,
    pub random_weights: bool,
    pub prompt_tokens: usize,
    pub gen_length: usize,
    pub block_length: usize,
    pub steps: usize,
    pub threshold: f32,
    pub tokens: usize,
    pub forwards: usize,
    pub tokens_per_forward: f64,
    pub elapsed_ms: f64,
    pub tokens_per_second: f64,
    /// From the call to the first forward that commits a token (prefill included).
    pub time_to_first_token_ms: Option<f64>,
}

pub fn run(backend: &mut dyn Backend, m: &BenchModel, p: &RealPrompt) -> Result<RealRun> {
    let t0 = Instant::now();
    let mut first = None;
    let gen = generate(
        backend,
        &m.ids,
        m.config.max_position_embeddings,
        &p.ids,
        &p.params,
        &mut |e| {
            if first.is_none() && !e.committed.is_empty() {
                first = Some(ms_since(t0));
            }
            true
        },
    )?;
    let elapsed_ms = ms_since(t0);
    Ok(RealRun {
        prompt_source: p.source.clone(),
        random_weights: m.random_weights,
        prompt_tokens: p.ids.len(),
        gen_length: p.params.gen_length,
        block_length: p.params.block_length,
        steps: p.params.steps,
        threshold: p.params.threshold,
        tokens: gen.tokens.len(),
        forwards: gen.forwards,
        tokens_per_forward: gen.tokens.len() as f64 / gen.forwards.max(1) as f64,
        elapsed_ms,
        tokens_per_second: gen.tokens.len() as f64 / (elapsed_ms / 1e3).max(1e-9),
        time_to_first_token_ms: first,
    })
}

#[cfg(test)]
mod tests {
    use super::super::source::from_dir;
    use super::*;

    #[test]
    fn a_model_with_golden_cases_uses_the_first_one() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-llada2");
        let m = from_dir(&dir, None).unwrap();
        let p = real_prompt(&m, &[], None, None).unwrap();
        let golden: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("golden/generate.json")).unwrap(),
        )
        .unwrap();
        let case = &golden["cases"][0];
        let want: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(p.ids, want);
        assert_eq!(
            p.params.gen_length as u64,
            case["gen_length"].as_u64().unwrap()
        );
        assert!(p.source.contains(case["name"].as_str().unwrap()));
        let p = real_prompt(&m, &[], Some(7), Some(4)).unwrap();
        assert_eq!((p.params.gen_length, p.params.steps), (7, 4));
    }
}

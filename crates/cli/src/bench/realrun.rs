//! A real decoding run through `generate()`: how many tokens a forward actually commits on a
//! prompt, the tokens per second that gives, and the time to the first committed token.

use super::source::BenchModel;
use super::workload::ms_since;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::time::Instant;
use unmask_core::decode::defaults::ModelDefaults;
use unmask_core::decode::Decoder;
use unmask_core::{generate, Backend, DecodeParams, Message};

/// The chat message real models without a golden file are asked.
const CHAT: &str = "Write a short poem about the sea.";

pub struct RealPrompt {
    pub ids: Vec<u32>,
    pub params: DecodeParams,
    /// Where the prompt comes from, in words.
    pub source: String,
}

/// The decoder the model calls for (llada2.0 for random weights).
pub fn detected_decoder(m: &BenchModel) -> Decoder {
    m.dir.as_deref().map_or(Decoder::Llada20, |d| {
        ModelDefaults::from_dir(d, &m.config, None).decoder
    })
}

/// The decoders a real run can use on this model: llada2.2 needs the edit tokens.
pub fn decoders(m: &BenchModel) -> Vec<Decoder> {
    Decoder::ALL
        .into_iter()
        .filter(|&d| d != Decoder::Llada22 || (m.ids.delete.is_some() && m.ids.split.is_some()))
        .collect()
}

/// The prompt of a real run under `decoder`: the first case of the model's
/// `golden/generate.json` (its prompt and decoding parameters), else a chat message with the
/// model's defaults; for random weights, the benchmark's random prompt. `gen_length` and
/// `steps` override.
pub fn real_prompt(
    m: &BenchModel,
    random_prompt: &[u32],
    gen_length: Option<usize>,
    steps: Option<usize>,
    decoder: Decoder,
) -> Result<RealPrompt> {
    let mut p = match &m.dir {
        Some(dir) => {
            let golden = dir.join("golden/generate.json");
            if let Some(case) = first_golden_case(&golden, decoder)? {
                case
            } else {
                let tok = m.tokenizer.as_ref().context("the model has no tokenizer")?;
                let ids = tok.encode_chat(&[Message {
                    role: "user".into(),
                    content: CHAT.into(),
                }])?;
                RealPrompt {
                    ids,
                    params: ModelDefaults::from_dir(dir, &m.config, Some(decoder)).params(),
                    source: format!("chat message {CHAT:?} with the model's defaults"),
                }
            }
        }
        None => RealPrompt {
            ids: random_prompt.to_vec(),
            params: DecodeParams {
                gen_length: 32,
                ..DecodeParams::for_decoder(decoder)
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

/// The first golden case's prompt and lengths; its thresholds only where the golden file is of
/// `decoder`'s family (else that family's defaults).
fn first_golden_case(path: &std::path::Path, decoder: Decoder) -> Result<Option<RealPrompt>> {
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
    let mut params = DecodeParams::for_decoder(decoder);
    let u = |k: &str| case.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let f = |k: &str| case.get(k).and_then(Value::as_f64).map(|x| x as f32);
    params.gen_length = u("gen_length").unwrap_or(params.gen_length);
    params.block_length = u("block_length").unwrap_or(params.block_length);
    let golden_decoder = case
        .get("decoder")
        .or_else(|| v.get("decoder"))
        .and_then(Value::as_str)
        .and_then(|d| d.parse::<Decoder>().ok());
    let has_edit_fields = case.get("editing_threshold").is_some();
    let same_family = golden_decoder.map_or(
        // Without a name: 2.0's files have no editing fields, 2.2's do.
        (decoder == Decoder::Llada20) != has_edit_fields,
        |g| g == decoder,
    );
    if same_family {
        params.steps = u("steps").unwrap_or(params.steps);
        params.threshold = f("threshold").unwrap_or(params.threshold);
        params.editing_threshold = f("editing_threshold").unwrap_or(params.editing_threshold);
        params.max_post_steps = u("max_post_steps").unwrap_or(params.max_post_steps);
        params.temperature = f("temperature").unwrap_or(params.temperature);
    }
    params.eos_early_stop = case.get("eos_early_stop").and_then(Value::as_bool);
    let name = case.get("name").and_then(Value::as_str).unwrap_or("?");
    Ok(Some(RealPrompt {
        ids,
        params,
        source: format!("golden case `{name}` of {}", path.display()),
    }))
}

#[derive(Debug, Clone, Serialize)]
pub struct RealRun {
    pub decoder: Decoder,
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
        decoder: gen.decoder,
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
        let p = real_prompt(&m, &[], None, None, Decoder::Llada20).unwrap();
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
        let p = real_prompt(&m, &[], Some(7), Some(4), Decoder::Llada20).unwrap();
        assert_eq!((p.params.gen_length, p.params.steps), (7, 4));
    }
}

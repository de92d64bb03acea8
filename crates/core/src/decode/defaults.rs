//! The model's own decoding defaults: `generation_config.json` where it sets them, else LLaDA2's.

use super::DecodeParams;
use serde_json::Value;
use std::path::Path;

/// Reads optional `generation_config.json` from a model directory. Unknown or malformed fields
/// are ignored: the file is advisory, and the built-in defaults are the reference's.
pub fn model_defaults(dir: &Path) -> DecodeParams {
    let mut p = DecodeParams::default();
    let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
        return p;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return p;
    };
    let u = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let f = |k: &str| v.get(k).and_then(Value::as_f64).map(|x| x as f32);
    if let Some(x) = u("block_length").filter(|&x| x > 0) {
        p.block_length = x;
    }
    if let Some(x) = u("steps").filter(|&x| x > 0) {
        p.steps = x;
    }
    if let Some(x) = u("gen_length")
        .or_else(|| u("max_new_tokens"))
        .filter(|&x| x > 0)
    {
        p.gen_length = x;
    }
    if let Some(x) = f("threshold").filter(|&x| x > 0.0 && x <= 1.0) {
        p.threshold = x;
    }
    if let Some(x) = f("temperature").filter(|&x| x >= 0.0) {
        p.temperature = x;
    }
    if let Some(x) = u("top_k") {
        p.top_k = x;
    }
    if let Some(x) = f("top_p").filter(|&x| x > 0.0 && x <= 1.0) {
        p.top_p = x;
    }
    p
}

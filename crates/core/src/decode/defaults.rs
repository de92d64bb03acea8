//! The model's own decoding defaults: each family's official defaults, overridden by
//! `generation_config.json` where it sets them.

use super::family::{self, Decoder};
use super::DecodeParams;
use crate::config::Config;
use serde_json::Value;
use std::path::Path;

/// What a model directory decodes with unless a request says otherwise: the detected decoder,
/// why, and the defaults of every family (a request may name another decoder, and then its
/// unset parameters take that family's defaults).
#[derive(Debug, Clone)]
pub struct ModelDefaults {
    pub decoder: Decoder,
    pub reason: String,
    generation_config: Option<Value>,
}

impl ModelDefaults {
    /// Detects the decoder (`forced` overrides the detection) and reads `generation_config.json`.
    pub fn from_dir(dir: &Path, config: &Config, forced: Option<Decoder>) -> Self {
        let (decoder, reason) = match forced {
            Some(d) => (d, "asked for".to_string()),
            None => family::detect(dir, config),
        };
        ModelDefaults {
            decoder,
            reason,
            generation_config: read_generation_config(dir),
        }
    }

    /// Defaults without a model directory (bench's synthetic weights, the browser).
    pub fn plain(decoder: Decoder) -> Self {
        ModelDefaults {
            decoder,
            reason: "asked for".into(),
            generation_config: None,
        }
    }

    /// The defaults of the detected decoder.
    pub fn params(&self) -> DecodeParams {
        self.params_for(self.decoder)
    }

    /// The defaults of `decoder`'s family with `generation_config.json` applied.
    pub fn params_for(&self, decoder: Decoder) -> DecodeParams {
        let mut p = DecodeParams::for_decoder(decoder);
        if let Some(v) = &self.generation_config {
            apply_generation_config(&mut p, v);
        }
        p
    }
}

fn read_generation_config(dir: &Path) -> Option<Value> {
    // The file is advisory: a missing, unsafe, huge or malformed one is ignored.
    let name = "generation_config.json";
    if !crate::files::exists(dir, name) {
        return None;
    }
    serde_json::from_str(&crate::files::read_text(dir, name).ok()?).ok()
}

/// Unknown or malformed fields are ignored: the file is advisory, and the built-in defaults are
/// the reference's. A value is taken only if the parameters stay valid with it (a huge
/// temperature or step count in a model's file must not make every request fail).
fn apply_generation_config(p: &mut DecodeParams, v: &Value) {
    let u = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let f = |k: &str| v.get(k).and_then(Value::as_f64).map(|x| x as f32);
    let mut keep_valid = |change: &dyn Fn(&mut DecodeParams)| {
        let mut q = p.clone();
        change(&mut q);
        if q.validate().is_ok() {
            *p = q;
        }
    };
    if let Some(x) = u("block_length") {
        keep_valid(&|q| q.block_length = x);
    }
    if let Some(x) = u("steps") {
        keep_valid(&|q| q.steps = x);
    }
    if let Some(x) = u("gen_length").or_else(|| u("max_new_tokens")) {
        keep_valid(&|q| q.gen_length = x);
    }
    if let Some(x) = f("threshold") {
        keep_valid(&|q| q.threshold = x);
    }
    if let Some(x) = f("editing_threshold") {
        keep_valid(&|q| q.editing_threshold = x);
    }
    if let Some(x) = u("max_post_steps") {
        keep_valid(&|q| q.max_post_steps = x);
    }
    if let Some(x) = u("num_to_transfer") {
        keep_valid(&|q| q.num_to_transfer = x);
    }
    if let Some(x) = f("temperature") {
        keep_valid(&|q| q.temperature = x);
    }
    if let Some(x) = u("top_k") {
        keep_valid(&|q| q.top_k = x);
    }
    if let Some(x) = f("top_p") {
        keep_valid(&|q| q.top_p = x);
    }
}

/// The first `eos_token_id` of `generation_config.json` other than `eos` (LLaDA2.2 lists
/// `<|endoftext|>` and `<|role_end|>`; either ends the answer).
pub fn extra_eos(dir: &Path, eos: u32) -> Option<u32> {
    let v = read_generation_config(dir)?;
    let ids: Vec<u64> = match v.get("eos_token_id")? {
        Value::Array(list) => list.iter().filter_map(Value::as_u64).collect(),
        x => x.as_u64().into_iter().collect(),
    };
    ids.into_iter()
        .filter(|&id| id <= u32::MAX as u64)
        .map(|id| id as u32)
        .find(|&id| id != eos)
}

//! A generation request as the worker receives it (JSON): what to continue and how to decode.
//!
//! ```json
//! {"input": "What is 23+45?", "options": {"threshold": 0.9, "gen_length": 16}}
//! {"input": [{"role": "user", "content": "Hi"}], "options": {}}
//! {"input": {"prompt_ids": [3820, 50, 56]}, "options": {"block_length": 16, "steps": 4}}
//! {"input": "<role>HUMAN</role>raw text", "raw": true}
//! ```
//! A plain string is a user message rendered through the chat template unless `raw` is set
//! (or the model has no template). Options are the fields of [`DecodeParams`]; an unknown
//! option is an error rather than silently ignored (a typo would otherwise change nothing).

use serde::Deserialize;
use serde_json::Value;
use unmask_core::decode::overrides::Mode;
use unmask_core::decode::Decoder;
use unmask_core::{ChatTokenizer, DecodeParams, Error, Message, Result};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Messages(Vec<Message>),
    Ids { prompt_ids: Vec<u32> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub input: Input,
    #[serde(default)]
    pub options: serde_json::Map<String, Value>,
    /// Encode a text input as is, without the chat template.
    #[serde(default)]
    pub raw: bool,
}

impl GenerateRequest {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::Invalid(format!(
                "generate request: {e} (expected {{\"input\": text | [messages] | {{\"prompt_ids\": [...]}}, \"options\": {{...}}}})"
            ))
        })
    }

    /// The decoding parameters: the defaults of the decoder (`options.decoder`, else `detected`)
    /// overridden by `options` (`mode: "speed" | "quality"` sets llada2.1's preset thresholds
    /// first).
    pub fn params(&self, detected: Decoder) -> Result<DecodeParams> {
        let decoder = match self.options.get("decoder") {
            Some(v) => serde_json::from_value::<Decoder>(v.clone())
                .map_err(|e| Error::Invalid(format!("options.decoder: {e}")))?,
            None => detected,
        };
        let mut base = DecodeParams::for_decoder(decoder);
        if let Some(m) = self.options.get("mode") {
            let m: Mode = serde_json::from_value(m.clone())
                .map_err(|e| Error::Invalid(format!("options.mode: {e}")))?;
            (base.threshold, base.editing_threshold) = m.values();
        }
        let mut merged = serde_json::to_value(base).map_err(|e| Error::Invalid(e.to_string()))?;
        let fields = merged.as_object_mut().expect("DecodeParams is a struct");
        fields.insert("mode".into(), Value::Null);
        for (k, v) in &self.options {
            if k == "mode" {
                continue;
            }
            if !fields.contains_key(k) {
                let mut known: Vec<&String> = fields.keys().collect();
                known.sort();
                return Err(Error::Invalid(format!(
                    "unknown option `{k}` (known: {})",
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            fields.insert(k.clone(), v.clone());
        }
        fields.remove("mode");
        let p: DecodeParams =
            serde_json::from_value(merged).map_err(|e| Error::Invalid(format!("options: {e}")))?;
        p.validate()?;
        Ok(p)
    }

    /// The prompt's token ids.
    pub fn prompt_ids(&self, tok: &ChatTokenizer) -> Result<Vec<u32>> {
        let ids = match &self.input {
            Input::Ids { prompt_ids } => prompt_ids.clone(),
            Input::Text(t) if self.raw || !tok.has_chat_template() => tok.encode(t)?,
            Input::Text(t) => tok.encode_chat(&[Message {
                role: "user".into(),
                content: t.clone(),
            }])?,
            Input::Messages(m) => tok.encode_chat(m)?,
        };
        if ids.is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_defaults_and_unknown_ones_are_named() {
        let r = GenerateRequest::from_json(
            r#"{"input": "hi", "options": {"threshold": 0.5, "gen_length": 16}}"#,
        )
        .unwrap();
        let p = r.params(Decoder::Llada20).unwrap();
        assert_eq!((p.threshold, p.gen_length), (0.5, 16));
        assert_eq!(p.block_length, DecodeParams::default().block_length);
        // Another decoder's defaults, and llada2.1's preset under explicit values.
        let r = GenerateRequest::from_json(
            r#"{"input": "hi", "options": {"decoder": "llada2.1", "mode": "speed", "editing_threshold": 0.2}}"#,
        )
        .unwrap();
        let p = r.params(Decoder::Llada20).unwrap();
        assert_eq!(
            (p.decoder, p.threshold, p.editing_threshold),
            (Decoder::Llada21, 0.5, 0.2)
        );
        let p = GenerateRequest::from_json(r#"{"input": "hi"}"#)
            .unwrap()
            .params(Decoder::Llada22)
            .unwrap();
        assert_eq!((p.decoder, p.threshold), (Decoder::Llada22, 0.5));
        let r =
            GenerateRequest::from_json(r#"{"input": "hi", "options": {"decoder": "x"}}"#).unwrap();
        assert!(r.params(Decoder::Llada20).is_err());

        let r =
            GenerateRequest::from_json(r#"{"input": "hi", "options": {"treshold": 0.5}}"#).unwrap();
        let e = r.params(Decoder::Llada20).unwrap_err().to_string();
        assert!(e.contains("treshold") && e.contains("threshold"), "{e}");

        let r = GenerateRequest::from_json(r#"{"input": "hi", "options": {"steps": 0}}"#).unwrap();
        assert!(r.params(Decoder::Llada20).is_err());
        let r =
            GenerateRequest::from_json(r#"{"input": "hi", "options": {"steps": "x"}}"#).unwrap();
        assert!(r.params(Decoder::Llada20).is_err());
    }

    #[test]
    fn inputs_of_each_shape_parse_and_nonsense_is_an_error() {
        let ids = GenerateRequest::from_json(r#"{"input": {"prompt_ids": [1, 2]}}"#).unwrap();
        assert!(matches!(ids.input, Input::Ids { ref prompt_ids } if prompt_ids == &[1, 2]));
        let chat = GenerateRequest::from_json(
            r#"{"input": [{"role": "user", "content": "x"}], "options": {}}"#,
        )
        .unwrap();
        assert!(matches!(chat.input, Input::Messages(ref m) if m.len() == 1));
        assert!(GenerateRequest::from_json(r#"{"input": 5}"#).is_err());
        assert!(GenerateRequest::from_json(r#"{"prompt": "x"}"#).is_err());
        assert!(GenerateRequest::from_json("not json").is_err());
    }
}

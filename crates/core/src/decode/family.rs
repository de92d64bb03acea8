//! Which generation of LLaDA2 a model directory holds, and so which decoding rule it needs
//! (docs/llada2.md): the weights of 2.0 and 2.1 are laid out alike, only their decoders differ;
//! 2.2 announces itself in `config.json`.

use crate::config::Config;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The decoding rule of one generation of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Decoder {
    /// Threshold commits, a committed token is final (SPEC §3).
    #[default]
    #[serde(rename = "llada2.0")]
    Llada20,
    /// Token-to-token editing of committed tokens (SPEC §3b).
    #[serde(rename = "llada2.1")]
    Llada21,
    /// Levenshtein editing with DELETE and SPLIT, block routing in the model (SPEC §3c).
    #[serde(rename = "llada2.2")]
    Llada22,
}

impl Decoder {
    pub const ALL: [Decoder; 3] = [Decoder::Llada20, Decoder::Llada21, Decoder::Llada22];

    pub fn name(self) -> &'static str {
        match self {
            Decoder::Llada20 => "llada2.0",
            Decoder::Llada21 => "llada2.1",
            Decoder::Llada22 => "llada2.2",
        }
    }

    /// Whether tokens written by the decoder can still change until their block ends.
    pub fn edits(self) -> bool {
        self != Decoder::Llada20
    }
}

impl std::fmt::Display for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Decoder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Decoder::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown decoder `{s}` (llada2.0, llada2.1, llada2.2)"
                ))
            })
    }
}

/// The decoder a model directory calls for, with the reason (printed as `--backend auto` prints
/// its choice): `expert_capacity > 0` is 2.2; a shipped `modeling_*.py` whose `generate` takes
/// `editing_threshold` is 2.1; anything else 2.0.
pub fn detect(dir: &Path, config: &Config) -> (Decoder, String) {
    if config.block_routing() {
        return (
            Decoder::Llada22,
            format!(
                "config.json sets expert_capacity {} (block routing)",
                config.expert_capacity
            ),
        );
    }
    if let Some(file) = editing_modeling_file(dir) {
        return (
            Decoder::Llada21,
            format!("{file}: generate() takes editing_threshold"),
        );
    }
    (
        Decoder::Llada20,
        "no expert_capacity in config.json and no modeling file with token editing".into(),
    )
}

/// The name of a `modeling_*.py` in `dir` whose `def generate(` signature names
/// `editing_threshold`.
fn editing_modeling_file(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("modeling_") && n.ends_with(".py"))
        .collect();
    names.sort();
    names.into_iter().find(|name| {
        crate::files::read_text(dir, name)
            .is_ok_and(|text| generate_takes(&text, "editing_threshold"))
    })
}

/// Whether some `def generate(...)` signature of Python source `text` names `param`.
pub fn generate_takes(text: &str, param: &str) -> bool {
    let mut rest = text;
    while let Some(at) = rest.find("def generate(") {
        let sig = &rest[at + "def generate(".len()..];
        let mut depth = 1usize;
        let end = sig
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(sig.len(), |(i, _)| i);
        if sig[..end]
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == param)
        {
            return true;
        }
        rest = &sig[end..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Decoder::ALL {
            assert_eq!(d.name().parse::<Decoder>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
        }
        assert!("llada3".parse::<Decoder>().is_err());
    }

    #[test]
    fn generate_signature() {
        let src = "class M:\n    def generate(\n        self, inputs,\n        editing_threshold: float = 0.9,\n        max_post_steps=16):\n        pass\n";
        assert!(generate_takes(src, "editing_threshold"));
        assert!(!generate_takes(src, "threshold_x"));
        // The word elsewhere in the file does not count.
        let other = "def generate(self, x, threshold=0.95):\n    editing_threshold = 1\n";
        assert!(!generate_takes(other, "editing_threshold"));
        let nested = "def generate(self, f=dict(a=1), editing_threshold=0.5): pass";
        assert!(generate_takes(nested, "editing_threshold"));
    }
}

//! Decoding parameters as a user gives them (CLI flags, a JSONL line, a request body, JS
//! options): every field optional. Resolving them against a model's defaults picks the decoder
//! first, so that unset parameters take *that* family's defaults.

use super::defaults::ModelDefaults;
use super::family::Decoder;
use super::DecodeParams;
use serde::{Deserialize, Serialize};

/// LLaDA2.1's presets (its model card's "speed" and "quality" settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// threshold 0.5, editing_threshold 0.0: fill eagerly, fix by editing.
    Speed,
    /// threshold 0.7, editing_threshold 0.5.
    Quality,
}

impl std::str::FromStr for Mode {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "speed" => Ok(Mode::Speed),
            "quality" => Ok(Mode::Quality),
            _ => Err(crate::error::Error::Invalid(format!(
                "unknown mode `{s}` (speed, quality)"
            ))),
        }
    }
}

impl Mode {
    /// (threshold, editing_threshold).
    pub fn values(self) -> (f32, f32) {
        match self {
            Mode::Speed => (0.5, 0.0),
            Mode::Quality => (0.7, 0.5),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub decoder: Option<Decoder>,
    /// A preset applied before the explicit thresholds.
    pub mode: Option<Mode>,
    pub gen_length: Option<usize>,
    pub block_length: Option<usize>,
    pub steps: Option<usize>,
    pub minimal_topk: Option<usize>,
    pub threshold: Option<f32>,
    pub editing_threshold: Option<f32>,
    pub max_post_steps: Option<usize>,
    pub num_to_transfer: Option<usize>,
    pub max_steps_per_block: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub eos_early_stop: Option<bool>,
}

impl Overrides {
    /// `self` where set, else `base` (a request over the server's command-line flags).
    pub fn or(&self, base: &Overrides) -> Overrides {
        macro_rules! pick {
            ($($f:ident),*) => { Overrides { $( $f: self.$f.or(base.$f), )* } };
        }
        pick!(
            decoder,
            mode,
            gen_length,
            block_length,
            steps,
            minimal_topk,
            threshold,
            editing_threshold,
            max_post_steps,
            num_to_transfer,
            max_steps_per_block,
            temperature,
            top_k,
            top_p,
            seed,
            eos_early_stop
        )
    }

    /// The decoder these overrides select over `d`'s detected one.
    pub fn decoder_over(&self, d: &ModelDefaults) -> Decoder {
        self.decoder.unwrap_or(d.decoder)
    }

    /// The parameters: the chosen decoder's defaults for this model, then the mode's preset,
    /// then every field that is set. Not validated (the caller reports errors its own way).
    pub fn resolve(&self, d: &ModelDefaults) -> DecodeParams {
        self.apply(d.params_for(self.decoder_over(d)))
    }

    /// Sets the given fields (and the mode's thresholds) on `p`; the decoder too, if given.
    pub fn apply(&self, mut p: DecodeParams) -> DecodeParams {
        if let Some(d) = self.decoder {
            p.decoder = d;
        }
        if let Some(m) = self.mode {
            (p.threshold, p.editing_threshold) = m.values();
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { p.$f = v; } )* };
        }
        set!(
            gen_length,
            block_length,
            steps,
            minimal_topk,
            threshold,
            editing_threshold,
            max_post_steps,
            num_to_transfer,
            max_steps_per_block,
            temperature,
            top_k,
            top_p,
            seed
        );
        if self.eos_early_stop.is_some() {
            p.eos_early_stop = self.eos_early_stop;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_the_chosen_decoders_defaults() {
        let d = ModelDefaults::plain(Decoder::Llada20);
        let o = Overrides {
            decoder: Some(Decoder::Llada22),
            gen_length: Some(16),
            ..Default::default()
        };
        let p = o.resolve(&d);
        assert_eq!(
            (p.decoder, p.threshold, p.gen_length),
            (Decoder::Llada22, 0.5, 16)
        );
        let q = Overrides {
            mode: Some(Mode::Quality),
            editing_threshold: Some(0.6),
            ..Default::default()
        }
        .resolve(&ModelDefaults::plain(Decoder::Llada21));
        assert_eq!((q.threshold, q.editing_threshold), (0.7, 0.6));
        // A request over flags: its own fields win, the flags fill the rest.
        let flags = Overrides {
            threshold: Some(0.8),
            seed: Some(3),
            ..Default::default()
        };
        let req = Overrides {
            threshold: Some(0.9),
            ..Default::default()
        };
        let m = req.or(&flags);
        assert_eq!((m.threshold, m.seed), (Some(0.9), Some(3)));
    }
}

//! `config.json` of a LLaDA2 checkpoint (SPEC §1), read field by field so that a missing or
//! inconsistent field is an error naming it.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The model hyper-parameters the runtime needs. Everything else in `config.json` is ignored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub num_shared_experts: usize,
    pub first_k_dense_replace: usize,
    pub routed_scaling_factor: f32,
    pub expert_bias: bool,
    pub partial_rotary_factor: f64,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub use_qk_norm: bool,
    pub tie_word_embeddings: bool,
}

pub const SUPPORTED_MODEL_TYPE: &str = "llada2_moe";

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text)
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not valid JSON: {e}")))?;
        Self::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::Config("expected a JSON object".into()));
        }
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Config("missing field `model_type`".into()))?;
        if model_type != SUPPORTED_MODEL_TYPE {
            return Err(Error::Config(format!(
                "unsupported model_type `{model_type}` (unmask runs `{SUPPORTED_MODEL_TYPE}`)"
            )));
        }
        let hidden_size = usize_field(v, "hidden_size")?;
        let num_attention_heads = usize_field(v, "num_attention_heads")?;
        let head_dim = match v.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(Error::Config(
                        "`head_dim` is absent and hidden_size is not a multiple of num_attention_heads".into(),
                    ));
                }
                hidden_size / num_attention_heads
            }
            Some(_) => usize_field(v, "head_dim")?,
        };
        let c = Config {
            model_type: model_type.to_string(),
            vocab_size: usize_field(v, "vocab_size")?,
            hidden_size,
            num_hidden_layers: usize_field(v, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: usize_field(v, "num_key_value_heads")?,
            head_dim,
            intermediate_size: usize_field(v, "intermediate_size")?,
            moe_intermediate_size: usize_field(v, "moe_intermediate_size")?,
            num_experts: usize_field(v, "num_experts")?,
            num_experts_per_tok: usize_field(v, "num_experts_per_tok")?,
            n_group: opt_usize_field(v, "n_group")?.unwrap_or(1),
            topk_group: opt_usize_field(v, "topk_group")?.unwrap_or(1),
            num_shared_experts: opt_usize_field(v, "num_shared_experts")?.unwrap_or(0),
            first_k_dense_replace: opt_usize_field(v, "first_k_dense_replace")?.unwrap_or(0),
            routed_scaling_factor: opt_f64_field(v, "routed_scaling_factor")?.unwrap_or(1.0) as f32,
            expert_bias: opt_bool_field(v, "moe_router_enable_expert_bias")?.unwrap_or(true),
            partial_rotary_factor: opt_f64_field(v, "partial_rotary_factor")?.unwrap_or(1.0),
            rms_norm_eps: f64_field(v, "rms_norm_eps")? as f32,
            rope_theta: f64_field(v, "rope_theta")? as f32,
            max_position_embeddings: usize_field(v, "max_position_embeddings")?,
            // Absent from the real config: it means true (SPEC §1).
            use_qk_norm: opt_bool_field(v, "use_qk_norm")?.unwrap_or(true),
            tie_word_embeddings: opt_bool_field(v, "tie_word_embeddings")?.unwrap_or(false),
        };
        reject_unsupported(v)?;
        c.validate()?;
        Ok(c)
    }

    /// Consistency between fields; each failure names the fields involved.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(Error::Config(m));
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return err(format!("`{name}` must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return err(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0) {
            return err(format!(
                "`partial_rotary_factor` must be in (0, 1], got {}",
                self.partial_rotary_factor
            ));
        }
        let rd = self.rotary_dim();
        if rd == 0 || !rd.is_multiple_of(2) {
            return err(format!(
                "rotary width int(head_dim * partial_rotary_factor) = {rd} must be even and positive"
            ));
        }
        if self.first_k_dense_replace < self.num_hidden_layers {
            // At least one MoE layer: its fields must make sense.
            if self.num_experts == 0 || self.moe_intermediate_size == 0 {
                return err("`num_experts` and `moe_intermediate_size` must be positive".into());
            }
            if self.n_group == 0 || !self.num_experts.is_multiple_of(self.n_group) {
                return err(format!(
                    "`num_experts` ({}) must be a multiple of `n_group` ({})",
                    self.num_experts, self.n_group
                ));
            }
            if self.topk_group == 0 || self.topk_group > self.n_group {
                return err(format!(
                    "`topk_group` ({}) must be in 1..=n_group ({})",
                    self.topk_group, self.n_group
                ));
            }
            let reachable = self.topk_group * (self.num_experts / self.n_group);
            if self.num_experts_per_tok == 0 || self.num_experts_per_tok > reachable {
                return err(format!(
                    "`num_experts_per_tok` ({}) must be in 1..={reachable} (topk_group x experts per group)",
                    self.num_experts_per_tok
                ));
            }
        }
        if self.first_k_dense_replace > 0 && self.intermediate_size == 0 {
            return err("`intermediate_size` must be positive".into());
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return err("`rms_norm_eps` must be a non-negative number".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return err("`rope_theta` must be positive".into());
        }
        Ok(())
    }

    /// Width of the rotated part of each head: `int(head_dim * partial_rotary_factor)`.
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor).floor() as usize
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.first_k_dense_replace
    }

    pub fn qkv_rows(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }

    pub fn shared_intermediate(&self) -> usize {
        self.moe_intermediate_size * self.num_shared_experts
    }
}

/// Fields whose non-default values change the maths in ways this runtime does not implement.
fn reject_unsupported(v: &Value) -> Result<()> {
    for flag in ["use_qkv_bias", "use_bias", "norm_head"] {
        if opt_bool_field(v, flag)? == Some(true) {
            return Err(Error::Config(format!("`{flag}: true` is not supported")));
        }
    }
    match v.get("rope_scaling") {
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(Error::Config(
                "`rope_scaling` is not supported (must be null)".into(),
            ))
        }
    }
    if let Some(f) = v.get("score_function") {
        if f.as_str() != Some("sigmoid") {
            return Err(Error::Config(format!(
                "`score_function` {f} is not supported (only \"sigmoid\")"
            )));
        }
    }
    if let Some(act) = v.get("hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(Error::Config(format!(
                "`hidden_act` {act} is not supported (only \"silu\")"
            )));
        }
    }
    Ok(())
}

fn usize_field(v: &Value, name: &str) -> Result<usize> {
    opt_usize_field(v, name)?.ok_or_else(|| Error::Config(format!("missing field `{name}`")))
}

fn opt_usize_field(v: &Value, name: &str) -> Result<Option<usize>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            Error::Config(format!(
                "field `{name}` must be a non-negative integer, got {x}"
            ))
        }),
    }
}

fn f64_field(v: &Value, name: &str) -> Result<f64> {
    opt_f64_field(v, name)?.ok_or_else(|| Error::Config(format!("missing field `{name}`")))
}

fn opt_f64_field(v: &Value, name: &str) -> Result<Option<f64>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("field `{name}` must be a number, got {x}"))),
    }
}

fn opt_bool_field(v: &Value, name: &str) -> Result<Option<bool>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("field `{name}` must be true or false, got {x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llada2_moe", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32,
            "moe_intermediate_size": 8, "num_experts": 4, "num_experts_per_tok": 2, "n_group": 2,
            "topk_group": 1, "num_shared_experts": 1, "first_k_dense_replace": 1,
            "routed_scaling_factor": 2.5, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-6,
            "rope_theta": 600000, "max_position_embeddings": 256
        })
    }

    #[test]
    fn parses_and_defaults() {
        let c = Config::from_json(&base()).unwrap();
        assert!(c.use_qk_norm);
        assert_eq!(c.rotary_dim(), 4);
        assert_eq!(c.qkv_rows(), 32);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");

        let mut v = base();
        v["model_type"] = "llama".into();
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("llama"), "{e}");

        let mut v = base();
        v["num_experts_per_tok"] = 3.into();
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("num_experts_per_tok"), "{e}");

        let mut v = base();
        v["n_group"] = 3.into();
        assert!(Config::from_json(&v)
            .unwrap_err()
            .to_string()
            .contains("n_group"));

        let mut v = base();
        v["vocab_size"] = "many".into();
        assert!(Config::from_json(&v)
            .unwrap_err()
            .to_string()
            .contains("vocab_size"));
    }
}

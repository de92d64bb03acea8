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
    /// LLaDA2.2 (SPEC §3c): experts allowed per routing block; 0 = group-limited top-k (2.0/2.1).
    pub expert_capacity: usize,
    /// LLaDA2.2: the routing block (32-aligned absolute positions); meaningful when
    /// `expert_capacity > 0`.
    pub block_size: usize,
    /// LLaDA2.2's edit tokens: DELETE removes a position, SPLIT inserts a mask before it.
    pub delete_token_id: Option<u32>,
    pub split_token_id: Option<u32>,
}

pub const SUPPORTED_MODEL_TYPE: &str = "llada2_moe";

/// Bounds of block routing that device kernels size their scratch by (LLaDA2.2: 32 and 256).
pub const MAX_BLOCK_SIZE: usize = 1024;
pub const MAX_ROUTED_EXPERTS: usize = 1024;

/// Bounds on the sizes a `config.json` may give, checked before anything is built or allocated
/// (LLaDA2.0-flash, the largest model of the family, has 32 layers, hidden 4096, 256 experts, a
/// vocabulary of 157184 and 32 heads of 128): see [`Config::size_limits`].
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_HEADS: usize = 1024;
pub const MAX_EXPERTS: usize = 4096;

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
        let (rope_theta, partial_rotary_factor) = rope(v)?;
        let expert_capacity = opt_usize_field(v, "expert_capacity")?.unwrap_or(0);
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
            partial_rotary_factor,
            rms_norm_eps: f64_field(v, "rms_norm_eps")? as f32,
            rope_theta,
            max_position_embeddings: usize_field(v, "max_position_embeddings")?,
            // Absent from the real config: it means true (SPEC §1).
            use_qk_norm: opt_bool_field(v, "use_qk_norm")?.unwrap_or(true),
            tie_word_embeddings: opt_bool_field(v, "tie_word_embeddings")?.unwrap_or(false),
            expert_capacity,
            block_size: opt_usize_field(v, "block_size")?.unwrap_or(32),
            delete_token_id: opt_id_field(v, "delete_token_id")?,
            split_token_id: opt_id_field(v, "split_token_id")?,
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
        for (name, value, max) in self.size_limits() {
            if value > max {
                return err(format!(
                    "`{name}` is {value}, more than this runtime supports ({max})"
                ));
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
            if self.block_routing() {
                self.validate_block_routing()?;
            } else if self.n_group == 0 || !self.num_experts.is_multiple_of(self.n_group) {
                return err(format!(
                    "`num_experts` ({}) must be a multiple of `n_group` ({})",
                    self.num_experts, self.n_group
                ));
            }
            if !self.block_routing() && (self.topk_group == 0 || self.topk_group > self.n_group) {
                return err(format!(
                    "`topk_group` ({}) must be in 1..=n_group ({})",
                    self.topk_group, self.n_group
                ));
            }
            let reachable = if self.block_routing() {
                self.expert_capacity
            } else {
                self.topk_group * (self.num_experts / self.n_group)
            };
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
        for (name, id) in [
            ("delete_token_id", self.delete_token_id),
            ("split_token_id", self.split_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= self.vocab_size) {
                return err(format!(
                    "`{name}` ({id}) is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                ));
            }
        }
        if self.delete_token_id.is_some() && self.delete_token_id == self.split_token_id {
            return err("`delete_token_id` and `split_token_id` must differ".into());
        }
        Ok(())
    }

    /// (field, value, largest accepted) of every size field.
    pub fn size_limits(&self) -> [(&'static str, usize, usize); 11] {
        [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEADS),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            (
                "moe_intermediate_size",
                self.moe_intermediate_size,
                MAX_WIDTH,
            ),
            ("num_experts", self.num_experts, MAX_EXPERTS),
            ("num_experts_per_tok", self.num_experts_per_tok, MAX_EXPERTS),
            ("num_shared_experts", self.num_shared_experts, MAX_HEADS),
        ]
    }

    /// LLaDA2.2's block routing (`expert_capacity > 0`) instead of group-limited top-k.
    pub fn block_routing(&self) -> bool {
        self.expert_capacity > 0
    }

    fn validate_block_routing(&self) -> Result<()> {
        let err = |m: String| Err(Error::Config(m));
        if self.expert_capacity > self.num_experts {
            return err(format!(
                "`expert_capacity` ({}) is larger than `num_experts` ({})",
                self.expert_capacity, self.num_experts
            ));
        }
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return err(format!(
                "`block_size` ({}) must be in 1..={MAX_BLOCK_SIZE}",
                self.block_size
            ));
        }
        if self.num_experts > MAX_ROUTED_EXPERTS {
            return err(format!(
                "block routing supports at most {MAX_ROUTED_EXPERTS} experts, `num_experts` is {}",
                self.num_experts
            ));
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

/// `rope_theta` and `partial_rotary_factor`, from the top level and/or transformers 5's
/// `rope_parameters` (LLaDA2.2 ships both): where both are given they must agree.
fn rope(v: &Value) -> Result<(f32, f64)> {
    let nested = match v.get("rope_parameters") {
        None | Some(Value::Null) => None,
        Some(o @ Value::Object(_)) => Some(o),
        Some(x) => {
            return Err(Error::Config(format!(
                "field `rope_parameters` must be an object, got {x}"
            )))
        }
    };
    if let Some(t) = nested
        .and_then(|o| o.get("rope_type"))
        .filter(|t| !t.is_null())
    {
        if t.as_str() != Some("default") {
            return Err(Error::Config(format!(
                "`rope_parameters.rope_type` {t} is not supported (only \"default\")"
            )));
        }
    }
    let pick = |name: &str| -> Result<Option<f64>> {
        let top = opt_f64_field(v, name)?;
        let inner = match nested {
            Some(o) => opt_f64_field(o, name)
                .map_err(|e| Error::Config(format!("rope_parameters: {e}")))?,
            None => None,
        };
        match (top, inner) {
            (Some(a), Some(b)) if a != b => Err(Error::Config(format!(
                "`{name}` ({a}) and `rope_parameters.{name}` ({b}) disagree"
            ))),
            (a, b) => Ok(a.or(b)),
        }
    };
    let theta = pick("rope_theta")?.ok_or_else(|| {
        Error::Config("missing field `rope_theta` (or `rope_parameters.rope_theta`)".into())
    })?;
    Ok((theta as f32, pick("partial_rotary_factor")?.unwrap_or(1.0)))
}

fn opt_id_field(v: &Value, name: &str) -> Result<Option<u32>> {
    match opt_usize_field(v, name)? {
        Some(id) if id > u32::MAX as usize => Err(Error::Config(format!(
            "field `{name}` ({id}) is not a token id"
        ))),
        other => Ok(other.map(|id| id as u32)),
    }
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
    fn llada22_fields() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 3e6, "partial_rotary_factor": 0.5});
        v["expert_capacity"] = 3.into();
        v["block_size"] = 32.into();
        // Grouped top-k fields are ignored under block routing, even inconsistent ones.
        v["n_group"] = 3.into();
        v["delete_token_id"] = 60.into();
        v["split_token_id"] = 61.into();
        let c = Config::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 3e6);
        assert!(c.block_routing());
        assert_eq!((c.delete_token_id, c.split_token_id), (Some(60), Some(61)));
        v["expert_capacity"] = 1.into();
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("num_experts_per_tok"), "{e}");
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

        // Sizes beyond the bounds are refused before anything is built (the value and the limit).
        let mut v = base();
        v["num_hidden_layers"] = 100_000.into();
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(
            e.contains("num_hidden_layers") && e.contains("100000") && e.contains("1024"),
            "{e}"
        );

        let mut v = base();
        v["expert_capacity"] = 5.into();
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(
            e.contains("expert_capacity") && e.contains("num_experts"),
            "{e}"
        );

        let mut v = base();
        v["delete_token_id"] = 64.into();
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("delete_token_id"), "{e}");

        let mut v = base();
        v["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 3e6});
        let e = Config::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");

        let mut v = base();
        v["vocab_size"] = "many".into();
        assert!(Config::from_json(&v)
            .unwrap_err()
            .to_string()
            .contains("vocab_size"));
    }
}

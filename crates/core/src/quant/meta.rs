//! How a quantized tensor is described in a safetensors file: its bytes are a `U8` tensor, and
//! the file's `__metadata__` names the format and the logical shape under `unmask.quant.<name>`.

use super::QuantFormat;
use crate::error::{Error, Result};
use crate::weights::DType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The metadata key of tensor `name`.
pub fn key(name: &str) -> String {
    format!("unmask.quant.{name}")
}

/// Metadata key naming the format a whole file was quantized to (informational).
pub const FILE_FORMAT_KEY: &str = "unmask.quantization";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub format: QuantFormat,
    pub shape: Vec<usize>,
}

impl Entry {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
}

/// The dtype and logical shape of tensor `name` as stored (`st_shape` of `st_dtype`): a `U8`
/// tensor with an entry in `metadata` is quantized; anything else is an ordinary tensor.
pub fn resolve(
    metadata: Option<&HashMap<String, String>>,
    name: &str,
    st_dtype: safetensors::Dtype,
    st_shape: &[usize],
    label: &str,
) -> Result<(DType, Vec<usize>)> {
    let entry = metadata.and_then(|m| m.get(&key(name)));
    match (st_dtype, entry) {
        (safetensors::Dtype::U8, Some(v)) => {
            let e: Entry = serde_json::from_str(v).map_err(|err| {
                Error::Weights(format!(
                    "{label}: tensor `{name}`: bad quantization metadata {v:?} ({err})"
                ))
            })?;
            if e.shape.is_empty() || e.shape.len() > 2 {
                return Err(Error::Weights(format!(
                    "{label}: tensor `{name}`: a quantized tensor must be 1-D or 2-D, metadata says {:?}",
                    e.shape
                )));
            }
            let want = e.format.bytes_for(
                e.shape[..e.shape.len() - 1].iter().product(),
                e.shape[e.shape.len() - 1],
            );
            let have: usize = st_shape.iter().product();
            if have != want {
                return Err(Error::Weights(format!(
                    "{label}: tensor `{name}`: {have} bytes stored, a {} tensor of shape {:?} needs {want}",
                    e.format, e.shape
                )));
            }
            Ok((DType::from_quant(e.format), e.shape))
        }
        (safetensors::Dtype::U8, None) => Err(Error::Weights(format!(
            "{label}: tensor `{name}` is U8 without quantization metadata (`{}` in __metadata__)",
            key(name)
        ))),
        (d, _) => Ok((DType::from_safetensors(d, name)?, st_shape.to_vec())),
    }
}

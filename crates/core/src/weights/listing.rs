//! A safetensors file read piece by piece: its header says where each tensor lies, and the
//! bytes are read only when a backend asks for that tensor. The browser loads models this way,
//! so a model larger than wasm memory (4 GiB) passes through it one tensor at a time on its way
//! to the GPU.

use crate::error::{Error, Result};
use crate::weights::DType;
use std::collections::HashMap;

/// Where one tensor lies in its file, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte offset in the file (header included).
    pub start: u64,
    pub len: usize,
}

/// Bytes before the tensor data (8 + the header's length), read from the file's first 8 bytes.
pub fn header_len(first8: &[u8], file_len: u64, label: &str) -> Result<usize> {
    let Some(n) = first8.get(..8) else {
        return Err(Error::Weights(format!(
            "{label}: file is truncated ({} bytes, shorter than the 8-byte header length)",
            first8.len()
        )));
    };
    let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
    // The safetensors format caps headers at 100 MB.
    if n > 100_000_000 || n + 8 > file_len {
        return Err(Error::Weights(format!(
            "{label}: not a valid safetensors file (header of {n} bytes, file of {file_len} bytes)"
        )));
    }
    Ok(8 + n as usize)
}

/// The tensors described by a safetensors header (`head`: the file's first
/// [`header_len`] bytes), in file order, checked against the file's length.
pub fn parse_header(head: &[u8], file_len: u64, label: &str) -> Result<Vec<(String, TensorEntry)>> {
    let data_start = header_len(head, file_len, label)?;
    let bad =
        |why: String| Error::Weights(format!("{label}: not a valid safetensors file ({why})"));
    let json = head
        .get(8..data_start)
        .ok_or_else(|| bad("header cut short".into()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let metadata: Option<HashMap<String, String>> = match header.get("__metadata__") {
        Some(m) => Some(serde_json::from_value(m.clone()).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    let mut out = Vec::new();
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            info.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("tensor `{name}` has no `{k}`")))
        };
        let st_dtype: safetensors::Dtype =
            serde_json::from_value(field("dtype")?).map_err(|e| bad(format!("`{name}`: {e}")))?;
        let st_shape: Vec<usize> =
            serde_json::from_value(field("shape")?).map_err(|e| bad(format!("`{name}`: {e}")))?;
        let [b, e]: [u64; 2] = serde_json::from_value(field("data_offsets")?)
            .map_err(|e| bad(format!("`{name}`: {e}")))?;
        if e < b {
            return Err(bad(format!("tensor `{name}` ends before it starts")));
        }
        if data_start as u64 + e > file_len {
            return Err(Error::Weights(format!(
                "{label}: tensor `{name}` ends at byte {} but the file has {file_len} bytes (truncated?)",
                data_start as u64 + e
            )));
        }
        let (dtype, shape) =
            crate::quant::meta::resolve(metadata.as_ref(), name, st_dtype, &st_shape, label)?;
        let len = (e - b) as usize;
        let want = dtype.bytes_for_shape(&shape);
        if want != len {
            return Err(Error::Weights(format!(
                "{label}: tensor `{name}`: {len} bytes do not hold a {dtype:?} tensor of shape \
                 {shape:?} ({want} bytes)"
            )));
        }
        out.push((
            name.clone(),
            TensorEntry {
                dtype,
                shape,
                start: data_start as u64 + b,
                len,
            },
        ));
    }
    out.sort_by_key(|(_, t)| t.start);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{add_shard, Storage, WeightStore};
    use std::sync::Arc;

    fn fixture_shards() -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let mut v: Vec<_> = ["tiny-llada2", "tiny-llada2-add"]
            .iter()
            .flat_map(|m| std::fs::read_dir(dir.join(m)).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_header_alone_places_every_tensor_as_the_full_parse_does() {
        let shards = fixture_shards();
        assert!(!shards.is_empty());
        for path in shards {
            let bytes = std::fs::read(&path).unwrap();
            let label = path.display().to_string();
            let n = header_len(&bytes[..8], bytes.len() as u64, &label).unwrap();
            let entries = parse_header(&bytes[..n], bytes.len() as u64, &label).unwrap();
            let mut store = WeightStore::default();
            add_shard(&mut store, Arc::new(Storage::Owned(bytes.clone())), &label).unwrap();
            assert_eq!(entries.len(), store.len());
            for (name, e) in &entries {
                let t = store.get(name).unwrap();
                assert_eq!((&t.dtype, &t.shape), (&e.dtype, &e.shape), "{name}");
                let s = e.start as usize;
                assert_eq!(t.bytes(), &bytes[s..s + e.len], "{name}");
            }
        }
    }

    #[test]
    fn truncated_and_malformed_headers_are_errors() {
        let path = &fixture_shards()[0];
        let bytes = std::fs::read(path).unwrap();
        let len = bytes.len() as u64;
        let n = header_len(&bytes[..8], len, "f").unwrap();
        assert!(header_len(&bytes[..4], len, "f").is_err());
        assert!(header_len(&bytes[..8], n as u64 - 1, "f").is_err());
        let e = parse_header(&bytes[..n], len - 1, "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut bad = bytes[..n].to_vec();
        bad[8] = b'[';
        assert!(parse_header(&bad, len, "f").is_err());
    }
}

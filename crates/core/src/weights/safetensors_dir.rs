//! A Hugging Face model directory's safetensors: one file, or shards through
//! `model.safetensors.index.json`.

use super::{Storage, Tensor, WeightStore};
use crate::error::{Error, Result};
use crate::files;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Finds the weight files of `dir` and loads (memory-maps) them.
pub fn load_dir(dir: &Path) -> Result<WeightStore> {
    // Every shard the index names must be a regular file inside the directory.
    let paths = weight_files(dir)?
        .iter()
        .map(|n| files::model_file(dir, n))
        .collect::<Result<Vec<PathBuf>>>()?;
    load_files(&paths)
}

/// The names of `dir`'s weight files: the shards its `model.safetensors.index.json` names, or
/// `model.safetensors` (the hub download fetches exactly these).
pub fn weight_files(dir: &Path) -> Result<Vec<String>> {
    let index = "model.safetensors.index.json";
    if files::exists(dir, index) {
        Ok(shard_list(dir, index)?.into_iter().collect())
    } else if files::exists(dir, "model.safetensors") {
        Ok(vec!["model.safetensors".into()])
    } else {
        Err(Error::Weights(format!(
            "{}: neither model.safetensors nor model.safetensors.index.json found",
            dir.display()
        )))
    }
}

/// The shard file names listed by an index's `weight_map`.
fn shard_list(dir: &Path, index: &str) -> Result<BTreeSet<String>> {
    let text = files::read_text(dir, index)?;
    let index = dir.join(index);
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Weights(format!("{}: not valid JSON: {e}", index.display())))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Weights(format!("{}: no `weight_map` object", index.display())))?;
    map.values()
        .map(|f| {
            f.as_str().map(str::to_string).ok_or_else(|| {
                Error::Weights(format!("{}: non-string shard name", index.display()))
            })
        })
        .collect()
}

pub fn load_files(files: &[PathBuf]) -> Result<WeightStore> {
    let mut store = WeightStore::default();
    for path in files {
        let storage = Arc::new(open(path)?);
        add_shard(&mut store, storage, &path.display().to_string())?;
    }
    Ok(store)
}

#[cfg(not(target_arch = "wasm32"))]
fn open(path: &Path) -> Result<Storage> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; a file truncated underneath us while running is outside
    // what any loader can defend against (the same holds for llama.cpp and safetensors itself).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Storage::Mmap(map))
}

#[cfg(target_arch = "wasm32")]
fn open(path: &Path) -> Result<Storage> {
    std::fs::read(path)
        .map(Storage::Owned)
        .map_err(|e| Error::io(path, e))
}

/// Parses one safetensors buffer's header and registers its tensors.
pub fn add_shard(store: &mut WeightStore, storage: Arc<Storage>, label: &str) -> Result<()> {
    let bytes = storage.bytes();
    check_not_truncated(bytes, label)?;
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Weights(format!("{label}: not a valid safetensors file ({e})")))?;
    let data_start = 8 + header_len;
    for (name, info) in meta.tensors() {
        // Quantized tensors are U8 bytes whose format and shape are in the file's metadata.
        let (dtype, shape) = crate::quant::meta::resolve(
            meta.metadata().as_ref(),
            &name,
            info.dtype,
            &info.shape,
            label,
        )?;
        let (b, e) = info.data_offsets;
        if data_start + e > bytes.len() {
            return Err(Error::Weights(format!(
                "{label}: tensor `{name}` ends at byte {} but the file has {} bytes (truncated?)",
                data_start + e,
                bytes.len()
            )));
        }
        let t = Tensor::new(dtype, shape, storage.clone(), data_start + b, e - b)
            .map_err(|err| Error::Weights(format!("{label}: tensor `{name}`: {err}")))?;
        store.insert(name, t);
    }
    Ok(())
}

/// Names truncation plainly (the safetensors crate only says the file is "not fully covered").
fn check_not_truncated(bytes: &[u8], label: &str) -> Result<()> {
    let truncated = |what: String| {
        Err(Error::Weights(format!(
            "{label}: file is truncated ({what})"
        )))
    };
    if bytes.len() < 8 {
        return truncated(format!(
            "{} bytes, shorter than the 8-byte header length",
            bytes.len()
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 {
        return truncated(format!(
            "header of {n} bytes, file of {} bytes",
            bytes.len()
        ));
    }
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n]) else {
        return Ok(()); // malformed, not truncated: the parser below says so
    };
    let data_end = header
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0) as usize;
    if 8 + n + data_end > bytes.len() {
        return truncated(format!(
            "the header describes {} bytes, the file has {}",
            8 + n + data_end,
            bytes.len()
        ));
    }
    Ok(())
}

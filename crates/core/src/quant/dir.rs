//! Quantizing a model directory into a new one that loads like any model: the config and
//! tokenizer files are copied, the weights are rewritten tensor by tensor with the selected
//! matrices packed.

use super::{quantize_tensor, BlockStats, QuantPlan, TensorReport};
use crate::error::{Error, Result};
use crate::loader::Model;
use crate::weights::writer::{write_safetensors, PlannedTensor};
use crate::weights::DType;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Hugging Face's default shard size: small enough for browsers to fetch piecewise.
/// (On 32-bit targets such as wasm32, where 5 GB does not fit a usize, the largest usize.)
pub const DEFAULT_SHARD_BYTES: usize = if usize::BITS >= 64 {
    5_000_000_000u64 as usize
} else {
    usize::MAX
};

#[derive(Debug, Clone, Serialize)]
pub struct DirReport {
    pub format: super::QuantFormat,
    pub out: PathBuf,
    pub files: Vec<PathBuf>,
    /// Over the quantized tensors: stored bits per weight and ‖W − Ŵ‖ / ‖W‖.
    pub bits_per_weight: f64,
    pub rel_rmse: f64,
    pub quantized_tensors: usize,
    pub quantized_params: u64,
    pub quantized_bytes: u64,
    /// Tensors kept in their stored precision (norms, router, biases, ...).
    pub kept_tensors: usize,
    pub kept_bytes: u64,
    pub tensors: Vec<TensorReport>,
}

/// Files of a model directory that are weights (rewritten) or checksums of the originals
/// (which would be wrong for the copy).
fn is_weight_or_checksum(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [
        ".safetensors",
        ".safetensors.index.json",
        ".bin",
        ".pt",
        ".pth",
        ".gguf",
        ".partial",
    ]
    .iter()
    .any(|s| lower.ends_with(s))
        || lower.starts_with("sha256sums")
        || lower.ends_with(".sha256")
}

/// Refuses an output that exists and is not an empty directory; creates it otherwise.
/// Returns whether it was created.
fn prepare_out(out: &Path) -> Result<bool> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Invalid(format!(
                    "{} is not empty; refusing to overwrite it",
                    out.display()
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io(out, e)),
    }
}

/// Writes `model` quantized by `plan` into `out` (absent or empty). `progress(done, total)`
/// counts tensors. On an error nothing is left behind in `out`.
pub fn quantize_dir(
    model: &Model,
    out: &Path,
    plan: &QuantPlan,
    max_shard_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DirReport> {
    let never = AtomicBool::new(false);
    quantize_dir_cancellable(model, out, plan, max_shard_bytes, progress, &never)
}

/// [`quantize_dir`] that stops with [`Error::Cancelled`] at the next tensor once `cancel` is
/// set (a signal handler sets it), leaving nothing behind in `out`.
pub fn quantize_dir_cancellable(
    model: &Model,
    out: &Path,
    plan: &QuantPlan,
    max_shard_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<DirReport> {
    let created = prepare_out(out)?;
    let mut copied = Vec::new();
    let result = write(
        model,
        out,
        plan,
        max_shard_bytes,
        progress,
        cancel,
        &mut copied,
    );
    if result.is_err() {
        if created {
            let _ = std::fs::remove_dir_all(out);
        } else {
            for f in &copied {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    result
}

/// The copy keeps the source's permissions, made writable by its owner (the user's new file,
/// even when a hub cache's blob is read-only) and never by group or others.
fn keep_permissions(from: &Path, to: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(from)
            .map_err(|e| Error::io(from, e))?
            .permissions()
            .mode();
        let perms = std::fs::Permissions::from_mode((mode | 0o200) & !0o022 & 0o7777);
        std::fs::set_permissions(to, perms).map_err(|e| Error::io(to, e))?;
    }
    #[cfg(not(unix))]
    let _ = (from, to);
    Ok(())
}

fn write(
    model: &Model,
    out: &Path,
    plan: &QuantPlan,
    max_shard_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
    copied: &mut Vec<PathBuf>,
) -> Result<DirReport> {
    let src = &model.dir;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        // Symlinks are followed (a Hugging Face snapshot is made of them), folders skipped;
        // anything else must be a regular file inside the directory or its cache's blobs/.
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) || is_weight_or_checksum(&name)
        {
            continue;
        }
        let from = crate::files::model_file(src, &name)?;
        let to = out.join(&name);
        std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
        copied.push(to.clone());
        keep_permissions(&from, &to)?;
    }

    let roles: HashMap<&str, crate::graph::WeightRole> = model
        .graph
        .weights
        .iter()
        .map(|w| (w.name.as_str(), w.role))
        .collect();
    let target = DType::from_quant(plan.format);
    let names: Vec<&String> = model.weights.iter().map(|(n, _)| n).collect();
    let mut planned = Vec::with_capacity(names.len());
    for (name, t) in model.weights.iter() {
        let quantize = roles
            .get(name.as_str())
            .is_some_and(|r| plan.applies_to(*r));
        if let Some(f) = t.dtype.quant() {
            return Err(Error::Invalid(format!(
                "`{name}` is already quantized ({f}); quantize a full-precision checkpoint"
            )));
        }
        planned.push(PlannedTensor {
            name: name.clone(),
            dtype: if quantize { target } else { t.dtype },
            shape: t.shape.clone(),
        });
    }

    let mut reports = Vec::new();
    let (mut kept, mut kept_bytes) = (0usize, 0u64);
    let total = planned.len();
    let mut extra = BTreeMap::new();
    extra.insert(
        super::meta::FILE_FORMAT_KEY.to_string(),
        plan.format.name().to_string(),
    );
    let files = write_safetensors(out, &planned, &extra, max_shard_bytes, &mut |i| {
        let t = model.weights.get(names[i])?;
        let bytes = if planned[i].dtype != t.dtype {
            let (q, stats) = quantize_tensor(plan.format, t).map_err(|e| {
                Error::Invalid(format!("quantizing `{}` to {}: {e}", names[i], plan.format))
            })?;
            reports.push(TensorReport::new(names[i], &q, plan.format, stats));
            q.bytes().to_vec()
        } else {
            kept += 1;
            kept_bytes += t.bytes().len() as u64;
            t.bytes().to_vec()
        };
        progress(i + 1, total);
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok(bytes)
    })?;

    let mut stats = BlockStats::default();
    for r in &reports {
        stats.merge(r.stats);
    }
    let params: u64 = reports.iter().map(|r| r.params).sum();
    let bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    Ok(DirReport {
        format: plan.format,
        out: out.to_path_buf(),
        files: copied.iter().cloned().chain(files).collect(),
        bits_per_weight: 8.0 * bytes as f64 / params.max(1) as f64,
        rel_rmse: stats.rel_rmse(),
        quantized_tensors: reports.len(),
        quantized_params: params,
        quantized_bytes: bytes,
        kept_tensors: kept,
        kept_bytes,
        tensors: reports,
    })
}

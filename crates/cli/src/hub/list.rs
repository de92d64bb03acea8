//! `unmask list`: the LLaDA2 models in the hub cache, whichever tool fetched them.

use super::id::is_commit_hash;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Serialize, Debug)]
pub struct CachedModel {
    /// `org/name`.
    pub repo: String,
    pub commit: String,
    /// The branches and tags that point at this commit (none for a snapshot fetched by hash).
    pub refs: Vec<String>,
    /// The bytes of the snapshot's files (its blobs, each counted once).
    pub bytes: u64,
    pub path: PathBuf,
}

/// Every snapshot under `cache` whose `config.json` is a model type unmask runs.
pub fn list(cache: &Path) -> Result<Vec<CachedModel>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(cache) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the hub cache {}", cache.display()))
        }
    };
    let mut folders: Vec<(String, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let repo = name.strip_prefix("models--")?.replacen("--", "/", 1);
            Some((repo, e.path()))
        })
        .collect();
    folders.sort();
    for (repo, folder) in folders {
        let refs = refs_by_commit(&folder.join("refs"));
        let Ok(snaps) = std::fs::read_dir(folder.join("snapshots")) else {
            continue;
        };
        let mut found: Vec<CachedModel> = snaps
            .filter_map(|s| {
                let s = s.ok()?;
                let commit = s
                    .file_name()
                    .into_string()
                    .ok()
                    .filter(|c| is_commit_hash(c))?;
                let path = s.path();
                runs_here(&path).then(|| CachedModel {
                    repo: repo.clone(),
                    refs: refs.get(&commit).cloned().unwrap_or_default(),
                    bytes: snapshot_bytes(&path),
                    commit,
                    path,
                })
            })
            .collect();
        found.sort_by(|a, b| {
            b.refs
                .len()
                .cmp(&a.refs.len())
                .then(a.commit.cmp(&b.commit))
        });
        out.extend(found);
    }
    Ok(out)
}

/// Whether the snapshot's config names the model type unmask runs.
fn runs_here(snapshot: &Path) -> bool {
    let Ok(text) = unmask_core::files::read_text(snapshot, "config.json") else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| {
        v.get("model_type").and_then(|t| t.as_str())
            == Some(unmask_core::config::SUPPORTED_MODEL_TYPE)
    })
}

fn refs_by_commit(refs: &Path) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![refs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            // Folders as they are, never through a link (a link loop would never end).
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Some(text) = super::cache::read_small(&p) {
                let commit = text.trim().to_string();
                if is_commit_hash(&commit) {
                    if let Ok(name) = p.strip_prefix(refs) {
                        by.entry(commit)
                            .or_default()
                            .push(name.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
        }
    }
    for names in by.values_mut() {
        names.sort();
    }
    by
}

/// The sizes of the files a snapshot holds (through its links), recursively.
fn snapshot_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            // Files through their links (snapshots link into blobs), folders never through one.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if let Ok(m) = std::fs::metadata(e.path()) {
                if m.is_file() {
                    total += m.len();
                }
            }
        }
    }
    total
}

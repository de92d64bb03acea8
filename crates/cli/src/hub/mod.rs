//! Models named by their Hugging Face id (`inclusionAI/LLaDA2.1-mini`, `org/name@revision`):
//! resolved to a snapshot folder of the standard hub cache, which `huggingface-cli` and Python
//! share, downloading only the files the runtime reads and only those not already there.
//!
//! The downloads themselves are hf-hub's (resumable part files, locks, the cache layout); this
//! module decides what to fetch, checks every blob against its etag, keeps the cache usable
//! offline and turns the hub's failures into errors a user can act on.

mod cache;
mod env;
mod errors;
mod fetch;
mod files;
mod id;
mod list;
mod progress;
mod space;
mod verify;

pub use env::HubEnv;
pub use id::{parse_or_explain, HubId};
pub use list::list;

use anyhow::{bail, Context, Result};
use cache::RepoCache;
use fetch::{Fetcher, InfoError};
use std::path::{Path, PathBuf};

/// `--model`: a path that exists as it is; else a hub id, resolved (and fetched) to its snapshot.
/// Anything else is handed on as a path, for the loader to say what is missing.
pub fn model_dir(arg: &Path) -> Result<PathBuf> {
    match hub_id_of(arg) {
        Some(id) => snapshot(&HubEnv::from_env(), &id).with_context(|| {
            format!("`{id}` is no directory here, so it was taken for a Hugging Face id")
        }),
        None => Ok(arg.to_path_buf()),
    }
}

/// The hub id `--model` names: not a path that exists, and of the `org/name[@rev]` shape.
pub fn hub_id_of(arg: &Path) -> Option<HubId> {
    if arg.exists() {
        return None;
    }
    arg.to_str().and_then(HubId::parse)
}

/// The snapshot folder of `id` with every runtime file in it: from the cache when offline or
/// when the hub cannot be reached, else brought up to date with the hub's listing.
pub fn snapshot(env: &HubEnv, id: &HubId) -> Result<PathBuf> {
    let rc = RepoCache::new(&env.cache, id);
    if env.offline {
        return match cached(&rc, id)? {
            Some(dir) => Ok(dir),
            None => bail!(
                "offline (HF_HUB_OFFLINE is set) and not in the cache: {id} (looked in {})",
                rc.dir.display()
            ),
        };
    }
    let fetcher = Fetcher::new(env, id)?;
    match fetcher.info() {
        Ok(info) => fetcher.fetch(&info),
        Err(InfoError::Refused(e)) => Err(e),
        Err(InfoError::Unreachable(why)) => match cached(&rc, id)? {
            Some(dir) => {
                eprintln!(
                    "hub: {} could not be reached ({why}); using the cached snapshot {}",
                    env.endpoint,
                    dir.display()
                );
                Ok(dir)
            }
            None => bail!(
                "offline and not in the cache: {id} ({} could not be reached: {why}; looked in {})",
                env.endpoint,
                rc.dir.display()
            ),
        },
    }
}

/// The cached snapshot `id` names, when it holds every runtime file, each blob checked (once)
/// against its etag; `None` when something is missing. A damaged blob is an error: without the
/// hub it cannot be replaced.
fn cached(rc: &RepoCache, id: &HubId) -> Result<Option<PathBuf>> {
    let Some(commit) = rc.commit_of(id) else {
        return Ok(None);
    };
    let dir = rc.snapshot(&commit);
    if files::REQUIRED.iter().any(|f| !dir.join(f).is_file()) {
        return Ok(None);
    }
    let Ok(weights) = unmask_core::weights::weight_files(&dir) else {
        return Ok(None);
    };
    if weights.iter().any(|w| !dir.join(w).is_file()) {
        return Ok(None);
    }
    let mut names: Vec<String> = files::REQUIRED
        .iter()
        .chain(files::OPTIONAL)
        .chain(&[files::INDEX])
        .map(|s| s.to_string())
        .chain(weights)
        .collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        names.extend(
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| files::is_modeling_file(n)),
        );
    }
    for name in &names {
        let Some(etag) = rc.linked_etag(&commit, name) else {
            continue;
        };
        if verify::is_marked(rc, &etag) {
            continue;
        }
        match verify::check_file(&rc.blob(&etag), &etag, None)? {
            verify::Check::Good => verify::mark(rc, &etag)?,
            bad => bail!(
                "the cached {name} of {id} is damaged ({}); run again with the hub reachable to fetch it anew",
                bad.describe()
            ),
        }
    }
    Ok(Some(dir))
}

//! Bringing a revision's runtime files into the cache: one listing request, then each missing or
//! damaged file downloaded by hf-hub (resuming its part file), checked against its etag, linked
//! into the snapshot. Files already there and checked cost nothing.

use super::cache::RepoCache;
use super::env::HubEnv;
use super::id::{is_commit_hash, HubId};
use super::progress::{Bar, Heartbeat};
use super::verify::{self, Check};
use super::{errors, files, space};
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::HumanBytes;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// `GET /api/models/{repo}/revision/{rev}?blobs=true`: the commit and every file's size and etag.
#[derive(Deserialize, Debug)]
pub struct RepoInfo {
    pub sha: String,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

#[derive(Deserialize, Debug)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

#[derive(Deserialize, Debug)]
pub struct Lfs {
    pub sha256: String,
    pub size: u64,
}

impl RepoInfo {
    pub fn sibling(&self, name: &str) -> Option<&Sibling> {
        self.siblings.iter().find(|s| s.rfilename == name)
    }
}

impl Sibling {
    /// The blob name the hub gives this file: the sha256 of an LFS file, else the git blob id.
    fn etag(&self) -> Option<&str> {
        self.lfs
            .as_ref()
            .map(|l| l.sha256.as_str())
            .or(self.blob_id.as_deref())
    }

    fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }
}

/// Why the listing failed: the network (the cache may still serve), or an answer.
pub enum InfoError {
    Unreachable(String),
    Refused(anyhow::Error),
}

pub struct Fetcher<'a> {
    env: &'a HubEnv,
    api: Api,
    id: &'a HubId,
    rc: RepoCache,
}

/// Attempts at a file whose bytes fail their check before giving up.
const ATTEMPTS: usize = 2;

impl<'a> Fetcher<'a> {
    pub fn new(env: &'a HubEnv, id: &'a HubId) -> Result<Fetcher<'a>> {
        let api = ApiBuilder::from_cache(Cache::new(env.cache.clone()))
            .with_endpoint(env.endpoint.clone())
            .with_token(env.token.clone())
            .with_progress(false)
            // A broken connection resumes from the part file within the run.
            .with_retries(3)
            .with_user_agent("unmask", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| anyhow!("starting the hub client: {e}"))?;
        Ok(Fetcher {
            env,
            api,
            id,
            rc: RepoCache::new(&env.cache, id),
        })
    }

    /// The revision's listing, with every file's etag and size.
    pub fn info(&self) -> std::result::Result<RepoInfo, InfoError> {
        let repo = Repo::with_revision(
            self.id.repo.clone(),
            RepoType::Model,
            self.id.revision.clone(),
        );
        let response = self
            .api
            .repo(repo)
            .info_request()
            .query("blobs", "true")
            // A hub that accepts the connection and never answers must not hang the run.
            .config()
            .timeout_global(Some(self.env.stall))
            .build()
            .call();
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                return Err(match errors::classify_ureq(&e) {
                    // Down or overloaded is unreachable too: the cache may still serve.
                    errors::Kind::Network | errors::Kind::Status(429 | 500..=599) => {
                        InfoError::Unreachable(e.to_string())
                    }
                    _ => InfoError::Refused(errors::explain(
                        self.env,
                        self.id,
                        None,
                        &e.to_string(),
                        errors::classify_ureq(&e),
                    )),
                });
            }
        };
        let info: RepoInfo = response.body_mut().read_json().map_err(|e| {
            InfoError::Refused(anyhow!(
                "{}: the hub's listing of {} is not what it should be: {e}",
                self.env.endpoint,
                self.id
            ))
        })?;
        if !is_commit_hash(&info.sha) {
            return Err(InfoError::Refused(anyhow!(
                "{}: the listing of {} names commit `{}`, not a 40-digit hash",
                self.env.endpoint,
                self.id,
                info.sha
            )));
        }
        Ok(info)
    }

    /// Brings every runtime file of `info`'s commit into the cache; returns the snapshot folder.
    pub fn fetch(&self, info: &RepoInfo) -> Result<PathBuf> {
        let commit = info.sha.as_str();
        let listing: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        let sibling = |name: &str| info.sibling(name);
        let first = files::before_weights(&listing, &self.id.to_string())?;
        let dir = self.rc.snapshot(commit);
        // The small files first: the shard index says which weights to fetch.
        let (small, entry) = first.split_at(first.len() - 1);
        for f in small {
            self.file(commit, f, sibling(f))?;
        }
        let mut weights = entry.to_vec();
        if entry[0] == files::INDEX {
            self.file(commit, files::INDEX, sibling(files::INDEX))?;
            weights = files::shards(&dir)?;
            if let Some(w) = weights.iter().find(|w| sibling(w).is_none()) {
                bail!(
                    "{}: the shard index names {w}, which the repository does not have",
                    self.id
                );
            }
        }
        self.check_space(commit, &weights, info)?;
        for w in &weights {
            self.file(commit, w, sibling(w))?;
        }
        self.rc.set_ref(self.id, commit)?;
        self.rc.drop_commit_ref(commit);
        Ok(dir)
    }

    /// Refuses to start downloads the disk cannot hold.
    fn check_space(&self, commit: &str, names: &[String], info: &RepoInfo) -> Result<()> {
        let mut needed = 0u64;
        for n in names {
            let Some(s) = info.sibling(n) else { continue };
            let (Some(etag), Some(size)) = (s.etag(), s.size()) else {
                continue;
            };
            if self.rc.blob(etag).is_file() || self.rc.linked_etag(commit, n).is_some() {
                continue;
            }
            let part = std::fs::metadata(self.rc.part(etag))
                .map(|m| m.len())
                .unwrap_or(0);
            needed += size.saturating_sub(part);
        }
        std::fs::create_dir_all(&self.rc.dir)?;
        if let Some(free) = space::available(&self.rc.dir) {
            if needed > free {
                bail!(
                    "not enough disk space for {}: the download needs {} more in {}, and {} are free (free some, or point HF_HUB_CACHE at a larger disk)",
                    self.id,
                    HumanBytes(needed),
                    self.env.cache.display(),
                    HumanBytes(free)
                );
            }
        }
        Ok(())
    }

    /// One file: kept if its blob is there and sound, else downloaded and checked.
    fn file(&self, commit: &str, name: &str, sibling: Option<&Sibling>) -> Result<()> {
        if !files::safe_name(name) {
            bail!(
                "{}: the repository lists `{name}`, not a plain file name",
                self.id
            );
        }
        let size = sibling.and_then(Sibling::size);
        let etag = sibling.and_then(Sibling::etag).map(str::to_string);
        // A listing without etags (a minimal mirror): the snapshot's own link says which blob.
        if let Some(known) = etag.clone().or_else(|| self.rc.linked_etag(commit, name)) {
            if self.reuse(commit, name, &known, size)? {
                return Ok(());
            }
        }
        for attempt in 1..=ATTEMPTS {
            eprintln!(
                "hub: downloading {name}{}",
                size.map(|s| format!(" ({})", HumanBytes(s)))
                    .unwrap_or_default()
            );
            self.download(commit, name)?;
            let got = self
                .rc
                .linked_etag(commit, name)
                .ok_or_else(|| anyhow!("{}: hf-hub stored {name} without its blob", self.id))?;
            if let Some(expected) = etag.as_deref().filter(|e| *e != got) {
                self.rc.remove(commit, name, &got);
                bail!(
                    "{}: {name} came with etag {got}, but the listing says {expected}",
                    self.id
                );
            }
            match verify::check_file(&self.rc.blob(&got), &got, size)? {
                Check::Good => {
                    verify::mark(&self.rc, &got)?;
                    return Ok(());
                }
                bad => {
                    self.rc.remove(commit, name, &got);
                    let _ = std::fs::remove_file(self.rc.part(&got));
                    if attempt == ATTEMPTS {
                        bail!(
                            "{}: {name} from {} failed its check {ATTEMPTS} times ({}); nothing of it was kept",
                            self.id,
                            self.env.endpoint,
                            bad.describe()
                        );
                    }
                    eprintln!(
                        "hub: {name} arrived damaged ({}); downloading it again",
                        bad.describe()
                    );
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Uses a blob already in the cache (from any tool, any snapshot) when it checks out, or a
    /// finished part file; removes a damaged one so it is fetched again.
    fn reuse(&self, commit: &str, name: &str, etag: &str, size: Option<u64>) -> Result<bool> {
        let blob = self.rc.blob(etag);
        let part = self.rc.part(etag);
        if !blob.is_file() {
            // A part file as long as the whole: the bytes all came, the rename did not happen.
            match std::fs::metadata(&part).map(|m| m.len()) {
                Ok(len) if Some(len) == size => std::fs::rename(&part, &blob)?,
                Ok(len) if size.is_some_and(|s| len > s) => {
                    let _ = std::fs::remove_file(&part);
                    return Ok(false);
                }
                _ => return Ok(false),
            }
        }
        if !verify::is_marked(&self.rc, etag) {
            if size.is_some_and(|s| s > 1 << 30) {
                eprintln!(
                    "hub: checking {name} ({}) against its sha256",
                    HumanBytes(size.unwrap_or(0))
                );
            }
            match verify::check_file(&blob, etag, size)? {
                Check::Good => verify::mark(&self.rc, etag)?,
                bad => {
                    eprintln!(
                        "hub: the cached {name} is damaged ({}); downloading it again",
                        bad.describe()
                    );
                    self.rc.remove(commit, name, etag);
                    return Ok(false);
                }
            }
        }
        self.rc.link(commit, name, etag)?;
        Ok(true)
    }

    /// hf-hub's download of `name` at `commit` on a thread of its own, watched: no bytes for
    /// `env.stall` ends the run with the part file kept for the next one.
    fn download(&self, commit: &str, name: &str) -> Result<()> {
        let beat = Heartbeat::new();
        let bar = Bar::new(name, beat.clone());
        let repo = self.api.repo(Repo::with_revision(
            self.id.repo.clone(),
            RepoType::Model,
            commit.to_string(),
        ));
        let file = name.to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(repo.download_with_progress(&file, bar));
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => {
                    let kind = errors::classify(&e);
                    return Err(errors::explain(self.env, self.id, Some(name), &e.to_string(), kind))
                        .with_context(|| format!("downloading {name} into {}", self.rc.dir.display()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if beat.idle() > self.env.stall => bail!(
                    "{}: the hub sent nothing for {} s while downloading {name} ({} received, kept in {} for the next run to resume)",
                    self.id,
                    self.env.stall.as_secs(),
                    HumanBytes(beat.bytes()),
                    self.rc.dir.join("blobs").display()
                ),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{}: the download of {name} stopped without a result", self.id)
                }
            }
        }
    }
}

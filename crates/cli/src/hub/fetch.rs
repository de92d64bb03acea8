//! Bringing a revision's runtime files into the cache: one listing request, then each missing or
//! damaged file downloaded by hf-hub (resuming its part file), checked against its etag, linked
//! into the snapshot. Files already there and checked cost nothing.

use super::cache::RepoCache;
use super::env::HubEnv;
use super::id::{is_commit_hash, plain_path, HubId};
use super::progress::{Bar, Heartbeat};
use super::verify::{self, Check};
use super::{errors, files, space};
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo, Metadata};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::HumanBytes;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
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

/// A blob name: one path component of letters, digits, `-` and `_` (the hub's are hex).
fn safe_etag(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 128
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
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
            .config()
            // A hub that accepts the connection and never answers must not hang the run.
            .timeout_global(Some(self.env.stall))
            // The answer's X-Error-Code tells a missing repository from a gated one.
            .http_status_as_error(false)
            .build()
            .call();
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                let kind = errors::classify_ureq(&e);
                return Err(match kind {
                    errors::Kind::Network => InfoError::Unreachable(e.to_string()),
                    _ => InfoError::Refused(errors::explain(
                        self.env,
                        self.id,
                        None,
                        &e.to_string(),
                        kind,
                    )),
                });
            }
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let header = |k: &str| {
                response
                    .headers()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.chars().take(200).collect::<String>())
            };
            let code = header("x-error-code");
            let detail = match (&code, header("x-error-message")) {
                (Some(c), Some(m)) => format!("HTTP {status}, {c}: {m}"),
                (Some(c), None) => format!("HTTP {status}, {c}"),
                (None, _) => format!("HTTP {status}"),
            };
            let kind = match code.as_deref() {
                Some("RepoNotFound" | "RevisionNotFound") => errors::Kind::Status(404),
                Some("GatedRepo") => errors::Kind::Status(403),
                _ => errors::Kind::Status(status),
            };
            return Err(match status {
                // Down or overloaded is unreachable too: the cache may still serve.
                429 | 500..=599 => InfoError::Unreachable(detail),
                _ => InfoError::Refused(errors::explain(self.env, self.id, None, &detail, kind)),
            });
        }
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
        // Gigabytes of weights are fetched only for a config the loader takes.
        unmask_core::files::read_text(&dir, "config.json")
            .and_then(|text| unmask_core::Config::from_json_str(&text))
            .with_context(|| format!("{} is not a model unmask can run", self.id))?;
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
        Ok(dir)
    }

    /// Refuses to start downloads the disk cannot hold.
    fn check_space(&self, commit: &str, names: &[String], info: &RepoInfo) -> Result<()> {
        let mut needed = 0u64;
        for n in names {
            let Some(s) = info.sibling(n) else { continue };
            let (Some(etag), Some(size)) = (s.etag().filter(|e| safe_etag(e)), s.size()) else {
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
        if !plain_path(name) {
            bail!(
                "{}: the repository lists `{name}`, not a plain file name",
                self.id
            );
        }
        let listed_size = sibling.and_then(Sibling::size);
        let listed_etag = sibling.and_then(Sibling::etag);
        if let Some(e) = listed_etag.filter(|e| !safe_etag(e)) {
            bail!(
                "{}: the listing gives {name} the etag `{e}`, which is no blob name",
                self.id
            );
        }
        // A listing without etags (a minimal mirror): the snapshot's own link says which blob.
        let known = listed_etag
            .map(str::to_string)
            .or_else(|| self.rc.linked_etag(commit, name).filter(|e| safe_etag(e)));
        if let Some(known) = &known {
            if self.reuse(commit, name, known, listed_size)? {
                return Ok(());
            }
        }
        // What hf-hub will store the file as, checked before it writes anything: the blob's name
        // comes from the answer's headers.
        let meta = self.probe(commit, name)?;
        let etag = meta.etag().to_string();
        if !safe_etag(&etag) || meta.commit_hash() != commit {
            bail!(
                "{}: the hub answered for {name} with etag `{etag}` at commit `{}` (listed: commit {commit}); refusing it",
                self.id,
                meta.commit_hash()
            );
        }
        if let Some(e) = listed_etag.filter(|e| *e != etag) {
            bail!(
                "{}: {name} comes with etag {etag}, but the listing says {e}",
                self.id
            );
        }
        let size = listed_size.unwrap_or(meta.size() as u64);
        if size != meta.size() as u64 {
            bail!(
                "{}: {name} is {} bytes by the listing and {} by the hub",
                self.id,
                size,
                meta.size()
            );
        }
        if known.is_none() && self.reuse(commit, name, &etag, Some(size))? {
            return Ok(());
        }
        for attempt in 1..=ATTEMPTS {
            eprintln!("hub: downloading {name} ({})", HumanBytes(size));
            let done = self.download(commit, name, size);
            // hf-hub names a ref after the commit it was asked for; huggingface_hub never does.
            self.rc.drop_commit_ref(commit);
            done?;
            if self.rc.linked_etag(commit, name).as_deref() != Some(etag.as_str()) {
                bail!(
                    "{}: hf-hub stored {name} elsewhere than blobs/{etag}",
                    self.id
                );
            }
            match verify::check_file(&self.rc.blob(&etag), &etag, Some(size))? {
                Check::Good => {
                    verify::mark(&self.rc, &etag)?;
                    return Ok(());
                }
                bad => {
                    self.rc.remove(commit, name, &etag);
                    let _ = std::fs::remove_file(self.rc.part(&etag));
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

    /// hf-hub's one-byte probe of `name` at `commit`: its etag, commit and size.
    fn probe(&self, commit: &str, name: &str) -> Result<Metadata> {
        let api = self.api.clone();
        let url = self.repo(commit).url(name);
        self.watched(name, None, Heartbeat::new(), move |_| api.metadata(&url))
    }

    /// hf-hub's download of `name` (`size` bytes) at `commit`, watched.
    fn download(&self, commit: &str, name: &str, size: u64) -> Result<()> {
        let repo = self.repo(commit);
        let file = name.to_string();
        self.watched(name, Some(size), Heartbeat::new(), move |beat| {
            repo.download_with_progress(&file, Bar::new(&file, beat))
        })
        .map(|_| ())
    }

    fn repo(&self, commit: &str) -> ApiRepo {
        self.api.repo(Repo::with_revision(
            self.id.repo.clone(),
            RepoType::Model,
            commit.to_string(),
        ))
    }

    /// Runs an hf-hub call on a thread of its own: no bytes for `env.stall` ends the run (a part
    /// file kept for the next one), and a panic inside the crate is an error, not a crash.
    fn watched<T: Send + 'static>(
        &self,
        name: &str,
        size: Option<u64>,
        beat: Arc<Heartbeat>,
        job: impl FnOnce(Arc<Heartbeat>) -> std::result::Result<T, ApiError> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        let b = beat.clone();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(b)));
            let _ = tx.send(r);
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(Ok(v))) => return Ok(v),
                Ok(Ok(Err(e))) => {
                    let kind = errors::classify(&e);
                    let mut detail = e.to_string();
                    if kind == errors::Kind::DiskFull {
                        if let Some(size) = size {
                            detail = format!(
                                "{detail}; {name} needs {}, {} of it received",
                                HumanBytes(size),
                                HumanBytes(beat.bytes())
                            );
                        }
                    }
                    return Err(errors::explain(self.env, self.id, Some(name), &detail, kind))
                        .with_context(|| format!("downloading {name} into {}", self.rc.dir.display()));
                }
                Ok(Err(_panic)) => bail!(
                    "{}: the hub client failed on {name} (an answer it could not handle; see above)",
                    self.id
                ),
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

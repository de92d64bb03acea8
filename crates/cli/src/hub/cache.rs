//! One repository's folder in the Hugging Face cache, in the layout `huggingface_hub` writes:
//!
//! ```text
//! models--org--name/
//!   blobs/<etag>                      the file's bytes, named by its sha256 (LFS) or git blob id
//!   snapshots/<commit>/<file>         a relative symlink to ../../blobs/<etag>
//!   refs/<branch or tag>              the commit it points at
//! ```
//!
//! Files another tool put there are used in place; unmask adds only `.unmask-verified/`, its own
//! record of the blobs whose hash it has checked (the Python library ignores other folders).

use super::id::{is_commit_hash, HubId};
use std::io;
use std::path::{Path, PathBuf};

pub struct RepoCache {
    pub dir: PathBuf,
}

impl RepoCache {
    pub fn new(cache: &Path, id: &HubId) -> RepoCache {
        RepoCache {
            dir: cache.join(id.folder()),
        }
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// The partial download hf-hub resumes from (`blobs/<etag>.part`).
    pub fn part(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.part"))
    }

    pub fn marker(&self, etag: &str) -> PathBuf {
        self.dir.join(".unmask-verified").join(etag)
    }

    /// The commit `id` names in the cache: itself when it is a commit hash with a snapshot, else
    /// what `refs/<revision>` holds.
    pub fn commit_of(&self, id: &HubId) -> Option<String> {
        if id.is_commit() {
            return self
                .snapshot(&id.revision)
                .is_dir()
                .then(|| id.revision.clone());
        }
        let text = read_small(&self.dir.join("refs").join(&id.revision))?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// Points `refs/<revision>` at `commit` (written whole, then renamed: never half a hash).
    /// A commit hash is its own snapshot name and gets no ref, as in huggingface_hub.
    pub fn set_ref(&self, id: &HubId, commit: &str) -> io::Result<()> {
        if id.is_commit() {
            return Ok(());
        }
        let path = self.dir.join("refs").join(&id.revision);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Written beside `refs/`, not in it: a crash must not leave something that reads as a ref.
        let tmp = self
            .dir
            .join(format!(".unmask-ref-{}.tmp", std::process::id()));
        std::fs::write(&tmp, commit)?;
        std::fs::rename(tmp, path)
    }

    /// hf-hub records the revision it was asked for as a ref; unmask asks by commit, and
    /// huggingface_hub never writes a ref named after a commit, so that file goes.
    pub fn drop_commit_ref(&self, commit: &str) {
        let _ = std::fs::remove_file(self.dir.join("refs").join(commit));
    }

    /// The etag of the blob `snapshots/<commit>/<file>` links to, if the link and blob exist.
    pub fn linked_etag(&self, commit: &str, file: &str) -> Option<String> {
        let link = self.snapshot(commit).join(file);
        let target = std::fs::read_link(&link).ok()?;
        let etag = target.file_name()?.to_str()?.to_string();
        self.blob(&etag).is_file().then_some(etag)
    }

    /// Makes `snapshots/<commit>/<file>` a relative symlink to `blobs/<etag>`, replacing a stale one.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> io::Result<PathBuf> {
        let link = self.snapshot(commit).join(file);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // ../../blobs/<etag>, one more `..` per folder level of the file inside the repository.
        let depth = file.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        match std::fs::symlink_metadata(&link) {
            Ok(_) => std::fs::remove_file(&link)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        symlink(&target, &link)?;
        Ok(link)
    }

    /// Forgets a blob: its bytes, its verified mark and a snapshot link to it.
    pub fn remove(&self, commit: &str, file: &str, etag: &str) {
        let _ = std::fs::remove_file(self.blob(etag));
        let _ = std::fs::remove_file(self.marker(etag));
        let _ = std::fs::remove_file(self.snapshot(commit).join(file));
    }
}

/// A small regular file's text (refs, marks, tokens): `None` for anything else (a directory, a
/// FIFO that would block, a file too large to be one).
pub fn read_small(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() || m.len() > 4096 {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Windows needs developer mode for symlinks; huggingface_hub then copies, and so does unmask.
#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    let blob = link.parent().unwrap_or(link).join(target);
    std::os::windows::fs::symlink_file(target, link)
        .or_else(|_| std::fs::copy(blob, link).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_links_and_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let id = HubId::parse("org/m").unwrap();
        let rc = RepoCache::new(tmp.path(), &id);
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(rc.commit_of(&id), None);
        rc.set_ref(&id, sha).unwrap();
        assert_eq!(rc.commit_of(&id).as_deref(), Some(sha));
        std::fs::create_dir_all(rc.dir.join("blobs")).unwrap();
        std::fs::write(rc.blob("e1"), b"x").unwrap();
        let link = rc.link(sha, "sub/dir/f.json", "e1").unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
        assert_eq!(rc.linked_etag(sha, "sub/dir/f.json").as_deref(), Some("e1"));
        // A stale link (its blob gone) is replaced, not an error.
        std::fs::remove_file(rc.blob("e1")).unwrap();
        assert_eq!(rc.linked_etag(sha, "sub/dir/f.json"), None);
        std::fs::write(rc.blob("e2"), b"y").unwrap();
        rc.link(sha, "sub/dir/f.json", "e2").unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"y");
        // A commit revision is a snapshot name, never a ref.
        let by_commit = HubId::parse(&format!("org/m@{sha}")).unwrap();
        rc.set_ref(&by_commit, sha).unwrap();
        assert!(!rc.dir.join("refs").join(sha).exists());
        assert_eq!(rc.commit_of(&by_commit).as_deref(), Some(sha));
    }
}

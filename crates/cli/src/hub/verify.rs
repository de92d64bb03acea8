//! Checking a blob against its name: the hub names an LFS file's blob by the file's sha256 and
//! any other file's by its git blob id (sha1 of `blob <len>\0` and the bytes), so the etag alone
//! says what the bytes must hash to.
//!
//! Hashing 32 GB takes tens of seconds, so a blob is hashed once: a mark under
//! `.unmask-verified/<etag>` records the length and modification time it had then, and a blob
//! that still has both is trusted. Truncated, rewritten or half-copied blobs fail the check.

use super::cache::RepoCache;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::path::Path;

/// What a blob's bytes were found to be, against its etag and the size the hub listed.
#[derive(Debug, PartialEq)]
pub enum Check {
    Good,
    /// The length differs from the one the hub lists.
    WrongSize {
        expected: u64,
        found: u64,
    },
    /// The bytes do not hash to the etag.
    WrongHash {
        found: String,
    },
}

impl Check {
    pub fn describe(&self) -> String {
        match self {
            Check::Good => "good".into(),
            Check::WrongSize { expected, found } => {
                format!("{found} bytes where the hub lists {expected}")
            }
            Check::WrongHash { found } => format!("its bytes hash to {found}"),
        }
    }
}

/// The hash an etag stands for, by its shape.
enum Kind {
    Sha256,
    GitBlob,
    /// A mirror's own etag: only the size can be checked.
    Opaque,
}

fn kind(etag: &str) -> Kind {
    let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
    match etag.len() {
        64 if hex => Kind::Sha256,
        40 if hex => Kind::GitBlob,
        _ => Kind::Opaque,
    }
}

/// Hashes `path` as its etag says and compares; `size` is the hub's listed length when known.
pub fn check_file(path: &Path, etag: &str, size: Option<u64>) -> io::Result<Check> {
    let len = std::fs::metadata(path)?.len();
    if let Some(expected) = size.filter(|&s| s != len) {
        return Ok(Check::WrongSize {
            expected,
            found: len,
        });
    }
    let found = match kind(etag) {
        Kind::Sha256 => hex(&hash_reader::<Sha256>(path, None)?),
        Kind::GitBlob => hex(&hash_reader::<Sha1>(path, Some(format!("blob {len}\0")))?),
        Kind::Opaque => return Ok(Check::Good),
    };
    Ok(if found.eq_ignore_ascii_case(etag) {
        Check::Good
    } else {
        Check::WrongHash { found }
    })
}

fn hash_reader<D: Digest>(path: &Path, prefix: Option<String>) -> io::Result<Vec<u8>> {
    let mut d = D::new();
    if let Some(p) = prefix {
        d.update(p.as_bytes());
    }
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        d.update(&buf[..n]);
    }
    Ok(d.finalize().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The length and modification time a mark pins a blob to.
fn stamp(path: &Path) -> io::Result<String> {
    let m = std::fs::metadata(path)?;
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{} {mtime}", m.len()))
}

/// Whether `blob` was hashed before and has not changed since.
pub fn is_marked(rc: &RepoCache, etag: &str) -> bool {
    let (Some(mark), Ok(now)) = (
        super::cache::read_small(&rc.marker(etag)),
        stamp(&rc.blob(etag)),
    ) else {
        return false;
    };
    mark == now
}

/// Records that `blob` hashed to its etag as it is now.
pub fn mark(rc: &RepoCache, etag: &str) -> io::Result<()> {
    let path = rc.marker(etag);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, stamp(&rc.blob(etag))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_name_the_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"hello\n").unwrap();
        // `git hash-object` and `sha256sum` of "hello\n".
        let git = "ce013625030ba8dba906f756967f9e9ca394464a";
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        assert_eq!(check_file(&f, git, Some(6)).unwrap(), Check::Good);
        assert_eq!(check_file(&f, sha, None).unwrap(), Check::Good);
        assert_eq!(
            check_file(&f, "W/\"mirror-etag\"", Some(6)).unwrap(),
            Check::Good
        );
        assert_eq!(
            check_file(&f, sha, Some(7)).unwrap(),
            Check::WrongSize {
                expected: 7,
                found: 6
            }
        );
        std::fs::write(&f, b"hellO\n").unwrap();
        assert!(matches!(
            check_file(&f, sha, Some(6)).unwrap(),
            Check::WrongHash { .. }
        ));
        assert!(matches!(
            check_file(&f, git, None).unwrap(),
            Check::WrongHash { .. }
        ));
    }

    #[test]
    fn a_mark_holds_until_the_blob_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let id = super::super::id::HubId::parse("o/m").unwrap();
        let rc = RepoCache::new(tmp.path(), &id);
        std::fs::create_dir_all(rc.dir.join("blobs")).unwrap();
        std::fs::write(rc.blob("e"), b"abc").unwrap();
        assert!(!is_marked(&rc, "e"));
        mark(&rc, "e").unwrap();
        assert!(is_marked(&rc, "e"));
        std::fs::write(rc.blob("e"), b"abcd").unwrap();
        assert!(!is_marked(&rc, "e"));
    }
}

//! A model's Hugging Face name, `org/name` with an optional `@revision`, checked before it is put in
//! a URL or a cache path.

use anyhow::{bail, Result};
use std::fmt;

/// `inclusionAI/LLaDA2.1-mini@main`: a model repository and the branch, tag or commit to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

/// The hub's own limit on each half of a repository name.
const MAX_NAME: usize = 96;
/// Branch, tag and file names longer than this are not names anyone types.
const MAX_PATH: usize = 255;

impl HubId {
    /// Parses `org/name[@revision]`; `None` when `text` does not have that shape (it may be a path).
    pub fn parse(text: &str) -> Option<HubId> {
        let (repo, revision) = match text.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (text, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        if !valid_name(org) || !valid_name(name) || !valid_revision(revision) {
            return None;
        }
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// `models--org--name`: the repository's folder in the hub cache.
    pub fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// Whether the revision is a full commit hash (a snapshot name, never a ref file).
    pub fn is_commit(&self) -> bool {
        is_commit_hash(&self.revision)
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == "main" {
            write!(f, "{}", self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// A 40-digit lowercase hex string: a git commit (and the name of a snapshot folder).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hub's rule for user, organisation and repository names: letters, digits, `-`, `_`, `.`;
/// not starting or ending with `-` or `.`, no `--` or `..` (which the cache folder would mangle).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// Branch, tag or commit: a plain path (it stays below `refs/` in the cache), not hidden.
fn valid_revision(s: &str) -> bool {
    plain_path(s) && !s.starts_with('.')
}

/// A relative path of letters, digits, `-`, `_`, `.` and `/` that stays where it is joined
/// (no empty, `.` or `..` parts) and needs no URL escaping: revisions, a repository's file names.
pub fn plain_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PATH
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && !s
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
}

/// Refuses a hub id with a message that says what shape was expected.
pub fn parse_or_explain(text: &str) -> Result<HubId> {
    match HubId::parse(text) {
        Some(id) => Ok(id),
        None => bail!(
            "`{text}` is not a Hugging Face model id (expected ORG/NAME or ORG/NAME@REVISION)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_revisions() {
        let id = HubId::parse("inclusionAI/LLaDA2.1-mini").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("inclusionAI/LLaDA2.1-mini", "main")
        );
        assert_eq!(id.folder(), "models--inclusionAI--LLaDA2.1-mini");
        assert_eq!(id.to_string(), "inclusionAI/LLaDA2.1-mini");
        let id = HubId::parse("org/m@refs/pr/3").unwrap();
        assert_eq!(id.to_string(), "org/m@refs/pr/3");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert!(HubId::parse(&format!("org/m@{sha}")).unwrap().is_commit());
        assert!(!HubId::parse("org/m@v1.0").unwrap().is_commit());
    }

    #[test]
    fn paths_and_bad_names_are_not_ids() {
        for s in [
            "tests/fixtures/tiny-llada2",
            "/abs/dir",
            "./org/m",
            "model",
            "org/",
            "/m",
            "org/m@",
            "org/m@../x",
            "org/m@a//b",
            "org/m@x/",
            "or g/m",
            "org/--m",
            "org/m..x",
            "org/.m",
            "org/m@a b",
            "~/m",
        ] {
            assert!(HubId::parse(s).is_none(), "{s}");
        }
        assert!(HubId::parse(&format!("org/{}", "a".repeat(97))).is_none());
        assert!(parse_or_explain("x")
            .unwrap_err()
            .to_string()
            .contains("ORG/NAME"));
    }
}

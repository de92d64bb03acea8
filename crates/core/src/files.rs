//! Opening the files of a model directory safely: only regular files inside the directory.
//!
//! A directory comes from anywhere (a download, a hub cache, an attacker), and some of its files
//! name others (`model.safetensors.index.json` names the shards). So a name must be a plain
//! relative path (no `..`, no root), must resolve to a regular file (never a FIFO, whose `open`
//! blocks forever, or a device), and must stay inside the directory once symlinks are resolved —
//! except that a Hugging Face cache snapshot (`models--org--name/snapshots/<rev>/`) holds
//! symlinks into its own `models--org--name/blobs/`, which are allowed.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Largest metadata file read whole (config, tokenizer, index, chat template, modeling code).
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// The path of `name` in model directory `dir`, checked as the module says.
pub fn model_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(Error::Weights(format!(
            "`{name}` is not a file name inside the model directory (absolute paths and `..` are refused)"
        )));
    }
    let path = dir.join(rel);
    let real = path.canonicalize().map_err(|e| Error::io(&path, e))?;
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    if !real.starts_with(&root) && !hub_blob_of(&root, &real) {
        return Err(Error::Weights(format!(
            "{} resolves to {}, outside the model directory",
            path.display(),
            real.display()
        )));
    }
    let meta = std::fs::metadata(&real).map_err(|e| Error::io(&path, e))?;
    if !meta.is_file() {
        return Err(Error::Weights(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(path)
}

/// Whether `real` lies in the `blobs/` folder of the Hugging Face cache entry whose snapshot is
/// `root` (`.../models--org--name/snapshots/<rev>`).
fn hub_blob_of(root: &Path, real: &Path) -> bool {
    let Some(snapshots) = root.parent() else {
        return false;
    };
    let Some(entry) = snapshots.parent() else {
        return false;
    };
    let is_entry = entry
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("models--"));
    is_entry
        && snapshots.file_name().is_some_and(|n| n == "snapshots")
        && real.starts_with(entry.join("blobs"))
}

/// Whether `name` exists in `dir` (as anything: a bad entry is reported when it is read).
pub fn exists(dir: &Path, name: &str) -> bool {
    std::fs::symlink_metadata(dir.join(name)).is_ok()
}

/// The bytes of `name` in `dir`, at most `max` of them (more is an error naming the file).
pub fn read(dir: &Path, name: &str, max: u64) -> Result<Vec<u8>> {
    let path = model_file(dir, name)?;
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::Weights(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// `name` in `dir` as UTF-8 text, at most [`MAX_TEXT_FILE`] bytes.
pub fn read_text(dir: &Path, name: &str) -> Result<String> {
    let bytes = read(dir, name, MAX_TEXT_FILE)?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Weights(format!("{}: not UTF-8 text", dir.join(name).display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.json"), "{}").unwrap();
        std::fs::write(tmp.path().join("outside.json"), "{}").unwrap();
        assert!(model_file(&dir, "a.json").is_ok());
        for bad in [
            "../outside.json",
            "/etc/passwd",
            "",
            "sub/../../outside.json",
        ] {
            assert!(model_file(&dir, bad).is_err(), "{bad}");
        }
        // A symlink out of the directory is refused; one inside it is fine.
        std::os::unix::fs::symlink(tmp.path().join("outside.json"), dir.join("link.json")).unwrap();
        let e = model_file(&dir, "link.json").unwrap_err().to_string();
        assert!(e.contains("outside the model directory"), "{e}");
        std::os::unix::fs::symlink(dir.join("a.json"), dir.join("inner.json")).unwrap();
        assert!(model_file(&dir, "inner.json").is_ok());
        // A directory (and a FIFO or device alike) is not a regular file.
        std::fs::create_dir(dir.join("d.json")).unwrap();
        let e = model_file(&dir, "d.json").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // Bounded reads.
        assert!(read(&dir, "a.json", 1).is_err());
        assert_eq!(read(&dir, "a.json", 2).unwrap(), b"{}");
    }

    #[test]
    fn a_hub_snapshot_may_link_into_its_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = tmp.path().join("models--org--name");
        let snap = entry.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(entry.join("blobs")).unwrap();
        std::fs::write(entry.join("blobs/deadbeef"), "{}").unwrap();
        std::os::unix::fs::symlink("../../blobs/deadbeef", snap.join("config.json")).unwrap();
        assert_eq!(read_text(&snap, "config.json").unwrap(), "{}");
        // Other folders of the cache are still outside.
        std::fs::create_dir_all(tmp.path().join("models--other/blobs")).unwrap();
        std::fs::write(tmp.path().join("models--other/blobs/x"), "{}").unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("models--other/blobs/x"),
            snap.join("y.json"),
        )
        .unwrap();
        assert!(model_file(&snap, "y.json").is_err());
    }
}

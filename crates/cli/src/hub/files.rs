//! Which of a repository's files the runtime reads: only those are fetched (a LLaDA2 repository
//! also carries READMEs, images, other formats' weights).

use super::id::plain_path;
use anyhow::{bail, Result};
use std::path::Path;

/// Read by every load (`Model::open`).
pub const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
/// Read when present: the chat template and special tokens, the published decoding defaults.
pub const OPTIONAL: &[&str] = &["tokenizer_config.json", "generation_config.json"];
pub const INDEX: &str = "model.safetensors.index.json";
pub const SINGLE: &str = "model.safetensors";

/// The `modeling_*.py` files the decoder detection reads (core's `decode::family`).
pub fn is_modeling_file(name: &str) -> bool {
    !name.contains('/') && name.starts_with("modeling_") && name.ends_with(".py")
}

/// The files to fetch before the weights, given the repository's listing: the required ones
/// (an error naming them when missing), the optional and modeling files it has, and the weights'
/// entry point (the shard index, or the single safetensors file).
pub fn before_weights(listing: &[&str], repo: &str) -> Result<Vec<String>> {
    let listed = |f: &str| listing.contains(&f);
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|f| !listed(f)).collect();
    if !missing.is_empty() {
        bail!(
            "{repo} is not a model unmask can run: it has no {}",
            missing.join(" or ")
        );
    }
    let mut files: Vec<String> = REQUIRED.iter().map(|s| s.to_string()).collect();
    files.extend(OPTIONAL.iter().filter(|f| listed(f)).map(|s| s.to_string()));
    files.extend(
        listing
            .iter()
            .filter(|f| is_modeling_file(f))
            .map(|s| s.to_string()),
    );
    if listed(INDEX) {
        files.push(INDEX.into());
    } else if listed(SINGLE) {
        files.push(SINGLE.into());
    } else {
        bail!("{repo} has no safetensors weights ({SINGLE} or {INDEX})");
    }
    Ok(files)
}

/// The shards the index in `dir` names (none for a single-file model).
pub fn shards(dir: &Path) -> Result<Vec<String>> {
    if !dir.join(INDEX).exists() {
        return Ok(Vec::new());
    }
    let names = unmask_core::weights::weight_files(dir)?;
    for n in &names {
        if !plain_path(n) {
            bail!(
                "{}: shard name `{n}` is not a plain file name inside the repository",
                dir.join(INDEX).display()
            );
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_files_of_a_listing() {
        let listing = [
            "config.json",
            "tokenizer.json",
            "README.md",
            "modeling_llada2_moe.py",
            "model.safetensors",
            "generation_config.json",
        ];
        assert_eq!(
            before_weights(&listing, "o/m").unwrap(),
            [
                "config.json",
                "tokenizer.json",
                "generation_config.json",
                "modeling_llada2_moe.py",
                "model.safetensors"
            ]
        );
        let e = before_weights(&listing[..4], "o/m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no safetensors"), "{e}");
        let e = before_weights(&["config.json"], "o/m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        assert!(is_modeling_file("modeling_llada2_moe.py"));
        assert!(!is_modeling_file("sub/modeling_x.py"));
        for bad in ["../x", "/x", "a//b", "a/./b", "x y", ""] {
            assert!(!plain_path(bad), "{bad}");
        }
        assert!(plain_path("model-00001-of-00002.safetensors"));
    }
}

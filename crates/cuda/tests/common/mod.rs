//! What the CUDA crate's tests share: finding clang.

use std::process::Command;

/// A clang++ that runs here (`UNMASK_CLANG` names one), if any.
pub fn clang() -> Option<String> {
    if let Ok(c) = std::env::var("UNMASK_CLANG") {
        return Some(c);
    }
    [
        "clang++-16",
        "clang++-19",
        "clang++-17",
        "clang++-18",
        "clang++",
    ]
    .into_iter()
    .find(|c| Command::new(c).arg("--version").output().is_ok())
    .map(str::to_string)
}

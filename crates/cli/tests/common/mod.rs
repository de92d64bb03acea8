//! Shared by the CLI tests: running the `unmask` binary and reading what it prints.
#![allow(dead_code)]

pub mod hub_server;

use serde_json::Value;
use std::process::{Command, Output};

pub fn unmask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unmask"))
        .args(args)
        .output()
        .expect("run unmask")
}

/// `unmask generate --model dir extra...`.
pub fn generate_on(dir: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--model", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    unmask(&args)
}

/// The JSON a successful run printed on stdout.
pub fn stdout_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "unmask failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A clean failure: non-zero exit, an `error:` line naming `needle`, and no panic.
pub fn assert_clean_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(err.contains("error:"), "{err}");
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

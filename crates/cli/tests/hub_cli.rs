//! Models by Hugging Face id, against a hub on 127.0.0.1 (`common/hub_server.rs`) serving the
//! addition fixture: the first run downloads into the standard cache layout and answers, later
//! runs answer from the cache with the hub gone, interrupted downloads resume, damaged files are
//! fetched again, and every failure is a clear error.

mod common;

use common::hub_server::{Fault, HubServer, LISTING, TOKEN};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = "unmask-test/tiny-add";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llada2-add")
}

/// A private cache (and HF_HOME) pointed at one hub; clones share the cache.
#[derive(Clone)]
struct Env {
    home: std::sync::Arc<tempfile::TempDir>,
    endpoint: String,
    extra: Vec<(String, String)>,
}

impl Env {
    fn new(endpoint: &str) -> Env {
        Env {
            home: std::sync::Arc::new(tempfile::tempdir().unwrap()),
            endpoint: endpoint.to_string(),
            extra: Vec::new(),
        }
    }

    fn cache(&self) -> PathBuf {
        self.home.path().join("hub")
    }

    fn with(mut self, k: &str, v: &str) -> Env {
        self.extra.push((k.into(), v.into()));
        self
    }

    /// The same cache with HF_HUB_OFFLINE=1.
    fn offline(&self) -> Env {
        self.clone().with("HF_HUB_OFFLINE", "1")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_unmask"));
        c.args(args)
            .env("HF_HUB_CACHE", self.cache())
            .env("HF_HOME", self.home.path().join("hf-home"))
            .env("HF_ENDPOINT", &self.endpoint)
            .env_remove("HF_TOKEN")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HUGGING_FACE_HUB_TOKEN");
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c.output().expect("run unmask")
    }

    fn answer(&self, model: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--chat",
            "What is 23+45?",
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn snapshot(&self, commit: &str) -> PathBuf {
        self.cache()
            .join("models--unmask-test--tiny-add/snapshots")
            .join(commit)
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_answers(o: &Output) {
    let (out, err) = text(o);
    assert!(o.status.success(), "unmask failed: {err}");
    assert_eq!(out.trim(), "68", "stderr: {err}");
}

/// Body requests for `file` (the CDN's for an LFS file), not counting hf-hub's one-byte probes.
fn downloads_of(hub: &HubServer, file: &str) -> usize {
    let f = hub.file(file);
    let path = match f.lfs() {
        true => format!("/cdn/{}", f.sha256),
        false => format!("/{}/resolve/{}/{file}", hub.repo, hub.commit),
    };
    hub.log()
        .iter()
        .filter(|l| l.path == path && l.range.as_deref() != Some("bytes=0-0"))
        .count()
}

#[test]
fn first_run_downloads_into_the_hub_cache_then_the_cache_answers_without_the_hub() {
    let hub = HubServer::start(&fixture(), REPO);
    let env = Env::new(&hub.url);

    // First run: the runtime files are fetched and the model answers.
    let o = env.answer(REPO, &[]);
    assert_answers(&o);
    let (out, err) = text(&o);
    assert!(err.contains("hub: downloading model.safetensors"), "{err}");
    println!("$ unmask generate --model {REPO} --chat 'What is 23+45?'\n{err}{out}");

    // The layout huggingface_hub writes: refs/main, snapshot links into blobs named by etag.
    let folder = env.cache().join("models--unmask-test--tiny-add");
    assert_eq!(
        std::fs::read_to_string(folder.join("refs/main")).unwrap(),
        hub.commit
    );
    assert!(!folder.join("refs").join(&hub.commit).exists());
    let snap = env.snapshot(&hub.commit);
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        let f = hub.file(name);
        let link = std::fs::read_link(snap.join(name)).unwrap();
        assert_eq!(link, Path::new("../../blobs").join(f.etag()), "{name}");
        assert_eq!(std::fs::read(snap.join(name)).unwrap(), f.bytes, "{name}");
    }
    // Only what the runtime reads: not the fixture's checksums file.
    assert!(!snap.join("SHA256SUMS").exists());
    assert_eq!(downloads_of(&hub, "SHA256SUMS"), 0);

    // Second run, hub still up: one listing request, no download.
    let before = hub.log().len();
    assert_answers(&env.answer(REPO, &[]));
    let after: Vec<_> = hub.log()[before..].iter().map(|l| l.path.clone()).collect();
    assert_eq!(after, [format!("/api/models/{REPO}/revision/main")]);

    // `--quantize` on a hub model, as on a directory.
    assert_answers(&env.answer(REPO, &["--quantize", "q8_0"]));

    // The hub failing (503) or answering nothing: the cache answers.
    hub.fault(LISTING, Fault::Status(503));
    let o = env.answer(REPO, &[]);
    assert_answers(&o);
    assert!(text(&o).1.contains("503"), "{}", text(&o).1);
    hub.fault(LISTING, Fault::Stall(0));
    let o = env
        .clone()
        .with("UNMASK_HUB_STALL_SECS", "1")
        .answer(REPO, &[]);
    assert_answers(&o);
    assert!(
        text(&o).1.contains("could not be reached"),
        "{}",
        text(&o).1
    );

    // The hub gone: the cached snapshot answers, with a note; and HF_HUB_OFFLINE=1 asks nothing.
    hub.stop();
    let o = env.answer(REPO, &[]);
    assert_answers(&o);
    let (out, err) = text(&o);
    assert!(err.contains("could not be reached"), "{err}");
    println!("$ unmask generate ... (the hub stopped)\n{err}{out}");
    let offline = env.offline();
    assert_answers(&offline.answer(REPO, &[]));
    assert_answers(&offline.answer(&format!("{REPO}@{}", hub.commit), &[]));

    // `unmask list` shows it with its ref and size; `unmask pull` prints the snapshot.
    let o = offline.run(&["list"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    println!("$ unmask list\n{out}");
    assert!(out.contains(REPO) && out.contains("main ("), "{out}");
    let o = offline.run(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let size: u64 = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ]
    .iter()
    .map(|n| hub.file(n).bytes.len() as u64)
    .sum();
    assert_eq!(listed[0]["repo"], REPO);
    assert_eq!(listed[0]["refs"][0], "main");
    assert_eq!(listed[0]["bytes"], size);
    let o = offline.run(&["pull", REPO]);
    assert_eq!(PathBuf::from(text(&o).0.trim()), snap);

    python_reads_the_cache(&offline.cache(), &hub.commit);
}

/// The Python checks need huggingface_hub; CI installs it and sets UNMASK_REQUIRE_HF_PYTHON.
fn python_skipped(why: &str) {
    assert!(
        std::env::var_os("UNMASK_REQUIRE_HF_PYTHON").is_none(),
        "UNMASK_REQUIRE_HF_PYTHON is set but: {why}"
    );
    println!("python check SKIPPED ({why})");
}

/// huggingface_hub (where Python has it) sees the cache unmask wrote as its own.
fn python_reads_the_cache(cache: &Path, commit: &str) {
    let script = format!(
        r#"
import sys
try:
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
except ImportError:
    print("SKIPPED (no huggingface_hub)"); sys.exit(0)
info = scan_cache_dir({cache:?})
assert not info.warnings, info.warnings
[repo] = [r for r in info.repos if r.repo_id == "{REPO}"]
[rev] = list(repo.revisions)
assert rev.commit_hash == "{commit}", rev.commit_hash
assert set(rev.refs) == {{"main"}}, rev.refs
names = sorted(f.file_name for f in rev.files)
assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"], names
path = try_to_load_from_cache("{REPO}", "model.safetensors", cache_dir={cache:?})
assert isinstance(path, str) and path.endswith("model.safetensors"), path
print("huggingface_hub agrees")
"#,
        cache = cache.display().to_string()
    );
    let o = match Command::new("python3").arg("-c").arg(&script).output() {
        Ok(o) => o,
        Err(e) => return println!("python check SKIPPED (no python3: {e})"),
    };
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "huggingface_hub disagrees with the cache: {out}{err}"
    );
    println!("python check: {}", out.trim());
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let hub = HubServer::start(&fixture(), REPO);
    let weights = hub.file("model.safetensors").bytes.clone();

    // A connection cut at 1 MiB: hf-hub resumes from the part file within the same run.
    hub.fault("model.safetensors", Fault::Cut(1 << 20));
    let env = Env::new(&hub.url);
    let o = env.run(&["pull", REPO]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(
        hub.log()
            .iter()
            .any(|l| l.range.as_deref() == Some("bytes=1048576-")),
        "no resumed request: {:?}",
        hub.log()
    );
    assert_eq!(
        std::fs::read(env.snapshot(&hub.commit).join("model.safetensors")).unwrap(),
        weights
    );

    // A connection that stalls at 2 MiB ends the run (the watchdog), keeping what arrived;
    // the partial file is never taken for the whole one; the next run resumes from it.
    hub.fault("model.safetensors", Fault::Stall(2 << 20));
    let env = Env::new(&hub.url).with("UNMASK_HUB_STALL_SECS", "2");
    let o = env.run(&["pull", REPO]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("sent nothing for 2 s"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let blob = env
        .cache()
        .join("models--unmask-test--tiny-add/blobs")
        .join(hub.file("model.safetensors").etag());
    let part = blob.with_extension("part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 2 << 20);
    assert!(!blob.exists());
    let o = env.offline().answer(REPO, &[]);
    assert!(
        !o.status.success() && text(&o).1.contains("not in the cache"),
        "{}",
        text(&o).1
    );
    let o = env.answer(REPO, &[]);
    assert_answers(&o);
    assert!(hub
        .log()
        .iter()
        .any(|l| l.range.as_deref() == Some("bytes=2097152-")));
}

#[test]
fn a_damaged_file_is_fetched_again() {
    let hub = HubServer::start(&fixture(), REPO);
    let weights = hub.file("model.safetensors").bytes.clone();
    let env = Env::new(&hub.url);

    // Damaged in transit: the sha256 check fails, the file is fetched once more.
    hub.fault("model.safetensors", Fault::Damage);
    let o = env.run(&["pull", REPO]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("arrived damaged"), "{err}");
    let path = env.snapshot(&hub.commit).join("model.safetensors");
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    assert_eq!(downloads_of(&hub, "model.safetensors"), 2);

    // Damaged in the cache (same length, one byte changed): found and fetched again.
    let blob = std::fs::canonicalize(&path).unwrap();
    let mut bad = weights.clone();
    bad[100] ^= 1;
    std::fs::write(&blob, &bad).unwrap();
    let o = env.answer(REPO, &[]);
    assert_answers(&o);
    assert!(text(&o).1.contains("is damaged"), "{}", text(&o).1);
    assert_eq!(std::fs::read(&path).unwrap(), weights);

    // Damaged while offline: a clear error, not a wrong answer.
    std::fs::write(&blob, &bad).unwrap();
    let o = env.offline().answer(REPO, &[]);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("damaged"), "{err}");

    // Damaged in transit every time: an error, and nothing of it kept.
    let env = Env::new(&hub.url);
    hub.fault("model.safetensors", Fault::Damage);
    hub.fault("model.safetensors", Fault::Damage);
    let o = env.run(&["pull", REPO]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("failed its check 2 times"),
        "{err}"
    );
    assert!(!env.snapshot(&hub.commit).join("model.safetensors").exists());
}

#[test]
fn hub_failures_are_errors_a_user_can_act_on() {
    let hub = HubServer::start(&fixture(), REPO);
    let env = Env::new(&hub.url);
    let fails = |o: &Output, needle: &str| {
        let (_, err) = text(o);
        assert!(!o.status.success(), "expected a failure: {err}");
        assert!(
            err.contains("error:") && err.contains(needle),
            "want {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };
    fails(
        &env.run(&["pull", "unmask-test/no-such-model"]),
        "no such model repository",
    );
    fails(
        &env.run(&["pull", &format!("{REPO}@no-such-branch")]),
        "no such model repository or revision",
    );
    fails(
        &env.run(&["pull", "not-an-id"]),
        "not a Hugging Face model id",
    );

    // Gated: refused without a token, with a hint; fetched with one (sent as a bearer token).
    let gated = format!("{REPO}-gated");
    fails(&env.run(&["pull", &gated]), "set HF_TOKEN");
    let o = Env::new(&hub.url)
        .with("HF_TOKEN", TOKEN)
        .answer(&gated, &[]);
    assert_answers(&o);
    assert!(hub
        .log()
        .iter()
        .any(|l| l.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));
    fails(
        &Env::new(&hub.url)
            .with("HF_TOKEN", "wrong")
            .run(&["pull", &gated]),
        "may not read it",
    );

    // A listing whose etags would name files outside the cache is refused, nothing written.
    hub.fault(LISTING, Fault::EscapingEtags);
    let env2 = Env::new(&hub.url);
    fails(&env2.run(&["pull", REPO]), "which is no blob name");
    assert!(!env2.home.path().join("outside").exists());

    // No hub and nothing cached; offline and nothing cached.
    hub.stop();
    fails(&env.answer(REPO, &[]), "offline and not in the cache");
    fails(&env.offline().answer(REPO, &[]), "HF_HUB_OFFLINE is set");
    // A path that does not exist and is no hub id stays a missing directory.
    fails(&env.answer("no/such/dir", &[]), "no/such/dir");
}

#[test]
fn files_python_fetched_are_used_in_place() {
    let hub = HubServer::start(&fixture(), REPO);
    let env = Env::new(&hub.url);
    let script = format!(
        r#"
import sys
try:
    from huggingface_hub import hf_hub_download
except ImportError:
    print("SKIPPED (no huggingface_hub)"); sys.exit(0)
for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]:
    hf_hub_download("{REPO}", f, cache_dir={cache:?}, endpoint="{url}")
print("fetched")
"#,
        cache = env.cache().display().to_string(),
        url = hub.url
    );
    let o = match Command::new("python3").arg("-c").arg(&script).output() {
        Ok(o) => o,
        Err(e) => return python_skipped(&format!("no python3: {e}")),
    };
    let (out, err) = text(&o);
    assert!(o.status.success(), "huggingface_hub failed: {out}{err}");
    if out.contains("SKIPPED") {
        return python_skipped(out.trim());
    }
    let before = hub.log().len();
    // unmask reads what Python wrote: one listing request, not one byte downloaded again.
    let o = env.answer(REPO, &[]);
    assert_answers(&o);
    let paths: Vec<_> = hub.log()[before..].iter().map(|l| l.path.clone()).collect();
    assert_eq!(paths, [format!("/api/models/{REPO}/revision/main")]);
}

/// A small tmpfs mounted for one test (root only), unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn a_download_the_disk_cannot_hold_is_refused_ahead_or_stopped_with_a_clear_error() {
    let hub = HubServer::start(&fixture(), REPO);
    let env = Env::new(&hub.url);
    // Room for the small files, not for the 5 MB of weights.
    let Some(_disk) = SmallDisk::mount(&env.cache(), 2 << 20) else {
        assert!(
            std::env::var_os("UNMASK_REQUIRE_TMPFS").is_none(),
            "UNMASK_REQUIRE_TMPFS is set but a tmpfs could not be mounted"
        );
        return println!("SKIPPED (mounting a tmpfs needs root)");
    };
    let o = env.run(&["pull", REPO]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("not enough disk space") && err.contains("HF_HUB_CACHE"),
        "{err}"
    );
    assert_eq!(downloads_of(&hub, "model.safetensors"), 0);
    println!("{}", err.trim());

    // A listing without sizes cannot be checked ahead: the disk fills mid-download, and says so.
    hub.bare_listing();
    let o = env.run(&["pull", REPO]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("is full") && err.contains("run again to resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!env.snapshot(&hub.commit).join("model.safetensors").exists());
    // The small files already there were kept, not fetched twice.
    assert_eq!(downloads_of(&hub, "config.json"), 1);
    println!("{}", err.trim());
}

//! Compiled kernels on disk, so that only the first load on a machine waits for NVRTC.
//!
//! An entry is keyed by everything that changes the cubin: the program source, NVRTC's options
//! (the architecture among them) and NVRTC's version. Entries are written to a temporary file
//! and renamed into place (a crash or a second process never leaves half a file under a key),
//! and carry their length and SHA-256 so a damaged entry is recompiled rather than loaded.
//!
//! Where: `UNMASK_CUDA_CACHE` (`0` or `off`: no cache), else `$XDG_CACHE_HOME/unmask/cuda`, else
//! `$HOME/.cache/unmask/cuda`.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// First bytes of every entry (the number is the entry format's version).
const MAGIC: &[u8; 16] = b"unmask-cubin-v1\n";
const HEADER: usize = MAGIC.len() + 8 + 32;
/// No cubin of this program comes near this; a larger file is not read.
pub const MAX_ENTRY_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleCache {
    pub dir: PathBuf,
}

impl ModuleCache {
    /// The cache directory from this process's environment (`None`: caching is off or there is
    /// no home directory).
    pub fn from_env() -> Option<ModuleCache> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<ModuleCache> {
        let set = |k| var(k).filter(|v: &String| !v.is_empty());
        let dir = match set("UNMASK_CUDA_CACHE") {
            Some(v) if v == "0" || v.eq_ignore_ascii_case("off") => return None,
            Some(v) => PathBuf::from(v),
            None => match (set("XDG_CACHE_HOME"), set("HOME")) {
                (Some(x), _) => PathBuf::from(x).join("unmask").join("cuda"),
                (None, Some(h)) => PathBuf::from(h).join(".cache").join("unmask").join("cuda"),
                (None, None) => return None,
            },
        };
        Some(ModuleCache { dir })
    }

    /// The entry name for a program: readable parts first (to tell entries apart by eye), then
    /// the hash of everything.
    pub fn key(source: &str, options: &[String], nvrtc: (i32, i32), sm: i32) -> String {
        let mut h = Sha256::new();
        h.update(MAGIC);
        h.update((source.len() as u64).to_le_bytes());
        h.update(source.as_bytes());
        for o in options {
            h.update((o.len() as u64).to_le_bytes());
            h.update(o.as_bytes());
        }
        h.update(nvrtc.0.to_le_bytes());
        h.update(nvrtc.1.to_le_bytes());
        let digest = h.finalize();
        format!(
            "sm_{sm}-nvrtc{}.{}-{}.cubin",
            nvrtc.0,
            nvrtc.1,
            short_hex(&digest)
        )
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The cached image under `key`, if present and intact.
    pub fn load(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.path(key);
        let len = std::fs::metadata(&path).ok()?.len();
        if len > MAX_ENTRY_BYTES + HEADER as u64 {
            return None;
        }
        decode(&std::fs::read(&path).ok()?)
    }

    /// Stores `image` under `key` (atomically: a temporary file renamed into place).
    pub fn store(&self, key: &str, image: &[u8]) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        // Unique per process and per store, so two threads storing one key never share it.
        static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{key}.{}.{n}.tmp", std::process::id()));
        let written = write_entry(&tmp, image).and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            std::fs::remove_file(&tmp).ok();
        }
        written.map(|()| path)
    }

    /// Drops the entry under `key` (one the driver refused to load).
    pub fn forget(&self, key: &str) {
        std::fs::remove_file(self.path(key)).ok();
    }
}

fn write_entry(path: &Path, image: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create_new(path)?;
    f.write_all(&encode(image))?;
    f.sync_all()
}

fn encode(image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + image.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(image));
    out.extend_from_slice(image);
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_at_checked(8)?;
    let (digest, image) = rest.split_at_checked(32)?;
    let len = u64::from_le_bytes(len.try_into().ok()?);
    if len != image.len() as u64 || Sha256::digest(image).as_slice() != digest {
        return None;
    }
    Some(image.to_vec())
}

/// The first 12 bytes of a digest in hex: the name of a cached build (a cubin here, the
/// emulator's library in emulator.rs).
pub(crate) fn short_hex(digest: &[u8]) -> String {
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_cache(name: &str) -> ModuleCache {
        let dir = std::env::temp_dir().join(format!("unmask-cubin-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        ModuleCache { dir }
    }

    #[test]
    fn the_directory_follows_the_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let at = |p: &'static [(&'static str, &'static str)]| {
            ModuleCache::from_vars(vars(p)).map(|c| c.dir)
        };
        assert_eq!(
            at(&[("UNMASK_CUDA_CACHE", "/c"), ("HOME", "/h")]),
            Some("/c".into())
        );
        assert_eq!(
            at(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]),
            Some("/x/unmask/cuda".into())
        );
        assert_eq!(at(&[("HOME", "/h")]), Some("/h/.cache/unmask/cuda".into()));
        assert_eq!(at(&[("UNMASK_CUDA_CACHE", "off"), ("HOME", "/h")]), None);
        assert_eq!(at(&[("UNMASK_CUDA_CACHE", "0")]), None);
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn the_key_changes_with_source_options_and_nvrtc_only() {
        let o = vec!["--gpu-architecture=sm_90".to_string()];
        let k = ModuleCache::key("a", &o, (12, 6), 90);
        assert_eq!(k, ModuleCache::key("a", &o, (12, 6), 90));
        assert!(
            k.starts_with("sm_90-nvrtc12.6-") && k.ends_with(".cubin"),
            "{k}"
        );
        let o86 = vec!["--gpu-architecture=sm_86".to_string()];
        for other in [
            ModuleCache::key("b", &o, (12, 6), 90),
            ModuleCache::key("a", &o86, (12, 6), 86),
            ModuleCache::key("a", &o, (12, 8), 90),
            ModuleCache::key("a", &[], (12, 6), 90),
        ] {
            assert_ne!(
                k[k.len() - 30..],
                other[other.len() - 30..],
                "{k} vs {other}"
            );
        }
        // Option boundaries count: ["ab"] is not ["a", "b"].
        assert_ne!(
            ModuleCache::key("", &["ab".into()], (12, 6), 90),
            ModuleCache::key("", &["a".into(), "b".into()], (12, 6), 90)
        );
    }

    #[test]
    fn an_entry_round_trips_and_a_damaged_one_is_a_miss() {
        let c = temp_cache("roundtrip");
        assert_eq!(c.load("k.cubin"), None);
        let image: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let path = c.store("k.cubin", &image).unwrap();
        assert_eq!(c.load("k.cubin").as_deref(), Some(image.as_slice()));
        let stored = std::fs::read(&path).unwrap();
        // Truncated, one byte flipped, or another format: recompiled, never loaded.
        std::fs::write(&path, &stored[..stored.len() - 1]).unwrap();
        assert_eq!(c.load("k.cubin"), None);
        let mut flipped = stored.clone();
        flipped[HEADER + 100] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(c.load("k.cubin"), None);
        std::fs::write(&path, b"unmask-cubin-v0\n").unwrap();
        assert_eq!(c.load("k.cubin"), None);
        // A store over a damaged entry repairs it; no temporary file stays behind.
        c.store("k.cubin", &image).unwrap();
        assert_eq!(c.load("k.cubin").as_deref(), Some(image.as_slice()));
        let names: Vec<_> = std::fs::read_dir(&c.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k.cubin")]);
        c.forget("k.cubin");
        assert_eq!(c.load("k.cubin"), None);
        std::fs::remove_dir_all(&c.dir).ok();
    }

    #[test]
    fn a_cache_that_cannot_be_written_is_an_error_not_a_panic() {
        let c = temp_cache("blocked");
        // The directory's place is taken by a file.
        std::fs::write(&c.dir, b"x").unwrap();
        assert!(c.store("k.cubin", b"image").is_err());
        assert_eq!(c.load("k.cubin"), None);
        std::fs::remove_file(&c.dir).ok();
    }
}

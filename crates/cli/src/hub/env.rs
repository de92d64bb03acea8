//! Where the hub is and what it may do, from the same environment variables `huggingface_hub`
//! reads, so that unmask, Python and `huggingface-cli` share one cache and one login.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct HubEnv {
    /// The cache's root (`.../hub`), holding `models--org--name` folders.
    pub cache: PathBuf,
    /// `https://huggingface.co`, or a mirror (`HF_ENDPOINT`), without a trailing slash.
    pub endpoint: String,
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: the cache only, no request at all.
    pub offline: bool,
    /// A download that receives nothing for this long is abandoned (its part file kept).
    pub stall: Duration,
}

impl HubEnv {
    pub fn from_env() -> HubEnv {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// The same from any variable lookup (the tests give their own).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> HubEnv {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let home = var("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        // huggingface_hub: HF_HOME defaults to $XDG_CACHE_HOME/huggingface, then ~/.cache/huggingface.
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| super::cache::read_small(&token_file))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v));
        let stall = var("UNMASK_HUB_STALL_SECS")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(60));
        HubEnv {
            cache,
            endpoint,
            token,
            offline,
            stall,
        }
    }
}

/// huggingface_hub's reading of a boolean variable.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

#[cfg(test)]
mod tests {
    use super::HubEnv;
    use std::path::Path;

    fn env(vars: &[(&str, &str)]) -> HubEnv {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubEnv::from_vars(&|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn the_cache_and_endpoint_are_where_huggingface_hub_puts_them() {
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(e.cache, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(e.endpoint, "https://huggingface.co");
        assert!(!e.offline && e.token.is_none());
        let e = env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(e.cache, Path::new("/x/huggingface/hub"));
        let e = env(&[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/x"),
            ("HF_HOME", "/hf"),
        ]);
        assert_eq!(e.cache, Path::new("/hf/hub"));
        let e = env(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_ENDPOINT", "http://m/"),
        ]);
        assert_eq!(e.cache, Path::new("/c"));
        assert_eq!(e.endpoint, "http://m");
        let e = env(&[
            ("HF_TOKEN", " hf_x \n"),
            ("HF_HUB_OFFLINE", "1"),
            ("UNMASK_HUB_STALL_SECS", "5"),
        ]);
        assert_eq!(e.token.as_deref(), Some("hf_x"));
        assert!(e.offline);
        assert_eq!(e.stall.as_secs(), 5);
        // The saved login, when no variable names a token.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), "hf_saved\n").unwrap();
        let e = env(&[("HF_HOME", tmp.path().to_str().unwrap())]);
        assert_eq!(e.token.as_deref(), Some("hf_saved"));
    }

    #[test]
    fn booleans_read_as_huggingface_hub_reads_them() {
        for v in ["1", "ON", "yes", "True "] {
            assert!(super::truthy(v), "{v}");
        }
        for v in ["0", "off", "", "2"] {
            assert!(!super::truthy(v), "{v}");
        }
    }
}

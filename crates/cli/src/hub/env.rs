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
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
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

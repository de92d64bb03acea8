//! A model assembled from fetched bytes: the browser has no directory to open, so the worker
//! hands over `config.json`, the tokenizer files and each safetensors shard as it arrives.

use std::path::PathBuf;
use std::sync::Arc;
use unmask_core::weights::{self, Storage, WeightStore};
use unmask_core::{ChatTokenizer, Config, Error, Model, Result};

pub struct ModelLoader {
    config: Config,
    tokenizer: ChatTokenizer,
    store: WeightStore,
}

impl ModelLoader {
    /// Parses the small files first, so a wrong URL or a non-LLaDA2 model fails before any
    /// weight is downloaded.
    pub fn new(
        config_json: &[u8],
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
    ) -> Result<Self> {
        let text = std::str::from_utf8(config_json)
            .map_err(|_| Error::Config("config.json is not UTF-8 text".into()))?;
        Ok(ModelLoader {
            config: Config::from_json_str(text)?,
            tokenizer: ChatTokenizer::from_bytes(tokenizer_json, tokenizer_config)?,
            store: WeightStore::default(),
        })
    }

    /// Registers one safetensors file's tensors; `name` labels errors.
    pub fn add_shard(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        weights::add_shard(&mut self.store, Arc::new(Storage::Owned(bytes)), name)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Checks every tensor the graph needs against the config. `label` stands for the model
    /// directory in messages (the base URL).
    pub fn finish(self, label: &str) -> Result<Model> {
        Model::from_parts(
            PathBuf::from(label),
            self.config,
            self.store,
            self.tokenizer,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unmask_tests::fixture;

    fn read(dir: &std::path::Path, f: &str) -> Vec<u8> {
        std::fs::read(dir.join(f)).unwrap()
    }

    #[test]
    fn a_sharded_model_loads_from_bytes_and_a_missing_shard_is_named() {
        let dir = fixture("tiny-llada2");
        let new = || {
            ModelLoader::new(
                &read(&dir, "config.json"),
                &read(&dir, "tokenizer.json"),
                Some(&read(&dir, "tokenizer_config.json")),
            )
            .unwrap()
        };
        let index: serde_json::Value =
            serde_json::from_slice(&read(&dir, "model.safetensors.index.json")).unwrap();
        let mut shards: Vec<String> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        shards.sort();
        shards.dedup();
        assert!(shards.len() > 1, "the fixture is sharded");

        let mut full = new();
        for s in &shards {
            full.add_shard(s, read(&dir, s)).unwrap();
        }
        let m = full.finish("fixture").unwrap();
        assert_eq!(m.graph.weights.len(), m.weights.len());

        let mut partial = new();
        partial
            .add_shard(&shards[0], read(&dir, &shards[0]))
            .unwrap();
        let e = partial.finish("fixture").err().unwrap().to_string();
        assert!(e.contains("missing tensor"), "{e}");
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = fixture("tiny-llada2");
        let tok = read(&dir, "tokenizer.json");
        let e = ModelLoader::new(b"{\"model_type\": \"llama\"}", &tok, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("llama"), "{e}");
        let e = ModelLoader::new(&read(&dir, "config.json"), b"<html>", None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("tokenizer.json"), "{e}");
        let mut l = ModelLoader::new(&read(&dir, "config.json"), &tok, None).unwrap();
        let e = l
            .add_shard("x.safetensors", b"<html>404</html>".to_vec())
            .unwrap_err();
        assert!(e.to_string().contains("x.safetensors"), "{e}");
    }
}

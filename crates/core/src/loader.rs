//! A model directory as users download it: config, weights and tokenizer, checked against each
//! other before anything runs.

use crate::chat::{ChatTokenizer, SpecialIds};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::model::llada2;
use crate::weights::{self, WeightStore};
use std::path::{Path, PathBuf};

pub struct Model {
    pub dir: PathBuf,
    pub config: Config,
    pub weights: WeightStore,
    pub tokenizer: ChatTokenizer,
    pub graph: Graph,
    /// The operator's bound on positions per request (`--max-context`), under the model's own.
    pub max_context: Option<usize>,
}

impl Model {
    pub fn open(dir: &Path) -> Result<Self> {
        let missing = |why: &str| {
            Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string()),
            ))
        };
        if !dir.exists() {
            return missing("model directory not found");
        }
        if !dir.is_dir() {
            return missing("not a directory (give the model's directory, not a file in it)");
        }
        let config = Config::from_json_str(&crate::files::read_text(dir, "config.json")?)?;
        let tokenizer = ChatTokenizer::from_dir(dir)?;
        let weights = weights::load_dir(dir)?;
        Self::from_parts(dir.to_path_buf(), config, weights, tokenizer)
    }

    pub fn from_parts(
        dir: PathBuf,
        config: Config,
        weights: WeightStore,
        tokenizer: ChatTokenizer,
    ) -> Result<Self> {
        let graph = Self::check_parts(&config, &tokenizer, &|name| {
            weights.get(name).ok().map(|t| t.shape.clone())
        })?;
        Ok(Model {
            dir,
            config,
            weights,
            tokenizer,
            graph,
            max_context: None,
        })
    }

    /// The checks of [`Model::from_parts`] for weights known only by their shapes (`shape_of`;
    /// a model streamed tensor by tensor): every tensor the config implies exists with its
    /// shape, and the special ids fit the vocabulary. Returns the model's graph.
    pub fn check_parts(
        config: &Config,
        tokenizer: &ChatTokenizer,
        shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<Graph> {
        let graph = llada2::build(config);
        let expected: Vec<(String, Vec<usize>)> = graph
            .weights
            .iter()
            .map(|w| (w.name.clone(), w.shape.clone()))
            .collect();
        weights::check_shapes(&expected, shape_of)?;
        let ids = tokenizer.ids;
        for (what, id) in [("eos", ids.eos), ("mask", ids.mask)] {
            if id as usize >= config.vocab_size {
                return Err(Error::Tokenizer(format!(
                    "the {what} id {id} is outside the embedding table (vocab_size {})",
                    config.vocab_size
                )));
            }
        }
        Ok(graph)
    }

    /// Special ids, with the valid vocabulary capped by the embedding table, the edit tokens of
    /// `config.json` and the second eos of `generation_config.json`.
    pub fn special_ids(&self) -> SpecialIds {
        let mut ids = self.tokenizer.ids.fit(&self.config);
        ids.eos_alt = crate::decode::defaults::extra_eos(&self.dir, ids.eos)
            .filter(|&id| (id as usize) < self.config.vocab_size);
        ids
    }

    /// The most positions (prompt + generation, padded to whole blocks) a request may use: the
    /// model's `max_position_embeddings`, at most [`crate::decode::MAX_CONTEXT`], and no more
    /// than the f32 KV cache of half the memory available now can hold (so one request can never
    /// make the process allocate itself to death), nor than [`Model::max_context`].
    pub fn context_limit(&self) -> usize {
        let per_position = summarize_kv(&self.config).max(1);
        let by_memory = available_memory().map_or(usize::MAX, |m| (m / 2 / per_position) as usize);
        self.config
            .max_position_embeddings
            .min(crate::decode::MAX_CONTEXT)
            .min(by_memory.max(1))
            .min(self.max_context.unwrap_or(usize::MAX).max(1))
    }

    /// `e` with the tensor named when it is a non-finite output caused by a weight (the scan
    /// reads every weight once, so it runs only on that error).
    pub fn explain(&self, e: Error) -> Error {
        match e {
            Error::NonFinite { forward, .. } => match self.weights.first_non_finite() {
                Some(name) => Error::NonFinite {
                    forward,
                    culprit: format!(": tensor `{name}` holds NaN or inf"),
                },
                None => e,
            },
            e => e,
        }
    }

    pub fn summary(&self) -> Summary {
        summarize(&self.config, &self.weights)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub parameters: u64,
    pub active_parameters: u64,
    pub weight_bytes: u64,
    pub bytes_by_dtype: std::collections::BTreeMap<String, usize>,
    /// f32 K and V for every layer, per position.
    pub kv_bytes_per_position: u64,
    /// Weights plus a full-context f32 KV cache.
    pub memory_full_context: u64,
}

/// Bytes of f32 K and V per position, over all layers.
fn summarize_kv(c: &Config) -> u64 {
    (c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 4) as u64
}

/// `MemAvailable` of /proc/meminfo, where there is one.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn summarize(c: &Config, w: &WeightStore) -> Summary {
    let (parameters, active_parameters) = llada2::parameter_counts(c);
    let bytes_by_dtype = w.bytes_by_dtype();
    let weight_bytes: u64 = bytes_by_dtype.values().map(|&b| b as u64).sum();
    let kv_bytes_per_position = summarize_kv(c);
    Summary {
        parameters,
        active_parameters,
        weight_bytes,
        bytes_by_dtype,
        kv_bytes_per_position,
        memory_full_context: weight_bytes
            + kv_bytes_per_position * c.max_position_embeddings as u64,
    }
}

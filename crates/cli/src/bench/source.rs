//! The model a benchmark runs: a model directory as downloaded, or a published shape
//! (LLaDA2.0-mini, -flash, the tiny fixture's, or any directory's `config.json`) filled with
//! seeded random weights directly in memory, optionally cut to its first layers.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use unmask_core::graph::Graph;
use unmask_core::model::llada2;
use unmask_core::synthetic::{random_weights, shape_config};
use unmask_core::weights::{self, DType, WeightStore};
use unmask_core::{ChatTokenizer, Config, SpecialIds};

/// Stored precision of a synthetic model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightFormat {
    Bf16,
    F16,
    F32,
    /// The bf16 model's values with the matrices and embedding table quantized to q8_0 blocks.
    #[value(name = "q8_0")]
    Q8_0,
    /// The same in q4 blocks.
    #[value(name = "q4")]
    Q4,
}

impl WeightFormat {
    fn dtype(self) -> DType {
        match self {
            WeightFormat::Bf16 => DType::BF16,
            WeightFormat::F16 => DType::F16,
            WeightFormat::F32 => DType::F32,
            WeightFormat::Q8_0 => DType::Q8_0,
            WeightFormat::Q4 => DType::Q4,
        }
    }
}

pub struct BenchModel {
    /// One line for the report ("LLaDA2.0-mini shape, 2 of 20 layers, random bf16 weights").
    pub description: String,
    pub config: Config,
    /// Layers of the full model before `--layers` cut it.
    pub full_layers: usize,
    pub graph: Graph,
    pub weights: WeightStore,
    pub ids: SpecialIds,
    pub tokenizer: Option<ChatTokenizer>,
    /// The model directory, for real weights (its golden prompt and decoding defaults).
    pub dir: Option<PathBuf>,
    pub random_weights: bool,
    /// Stored precision of the matrices ("bf16", "q8_0", ...).
    pub format: String,
    /// Time to load or generate the weights.
    pub build_seconds: f64,
}

/// The published special ids of the LLaDA2 tokenizer (SPEC §1), for synthetic models of the
/// real vocabulary.
const REAL_VOCAB: usize = 157_184;
const REAL_IDS: SpecialIds = SpecialIds {
    eos: 156_892,
    mask: 156_895,
    valid_vocab: 157_153,
    eos_alt: None,
    delete: None,
    split: None,
    routing_block: None,
};

/// A model directory with its real weights (memory-mapped), optionally cut to `layers`.
pub fn from_dir(dir: &Path, layers: Option<usize>) -> Result<BenchModel> {
    let t = Instant::now();
    let mut config = Config::from_file(&dir.join("config.json"))
        .with_context(|| format!("loading model {}", dir.display()))?;
    let full_layers = config.num_hidden_layers;
    cut_layers(&mut config, layers)?;
    let tokenizer = ChatTokenizer::from_dir(dir)?;
    let weights = weights::load_dir(dir)?;
    // The graph of the cut config reads only the first layers' tensors; the rest stay unmapped.
    let model = unmask_core::Model::from_parts(dir.to_path_buf(), config, weights, tokenizer)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let ids = model.special_ids();
    let format = matrix_format(&model.graph, &model.weights);
    Ok(BenchModel {
        description: format!(
            "{} ({}, {format} weights)",
            dir.display(),
            layer_note(model.config.num_hidden_layers, full_layers)
        ),
        full_layers,
        ids,
        graph: model.graph,
        weights: model.weights,
        config: model.config,
        tokenizer: Some(model.tokenizer),
        dir: Some(dir.to_path_buf()),
        random_weights: false,
        format,
        build_seconds: t.elapsed().as_secs_f64(),
    })
}

/// Random weights of a shape: `mini`, `flash`, `tiny`, or a directory holding a `config.json`
/// (its tokenizer, if any, gives the special ids; its weights are not read).
pub fn synthetic(
    shape: &str,
    layers: Option<usize>,
    format: WeightFormat,
    seed: u64,
) -> Result<BenchModel> {
    let dir = Path::new(shape);
    let (mut config, name, tokenizer) = if dir.join("config.json").is_file() {
        let c = Config::from_file(&dir.join("config.json"))
            .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
        let tok = if dir.join("tokenizer.json").is_file() {
            Some(ChatTokenizer::from_dir(dir)?)
        } else {
            None
        };
        (c, format!("{} shape", dir.display()), tok)
    } else {
        let c = shape_config(shape).map_err(|e| {
            anyhow::anyhow!("{e}, or a directory with a config.json (`{shape}` is neither)")
        })?;
        let name = match shape {
            "mini" => "LLaDA2.0-mini shape".to_string(),
            "flash" => "LLaDA2.0-flash shape".to_string(),
            other => format!("{other} shape"),
        };
        (c, name, None)
    };
    let full_layers = config.num_hidden_layers;
    cut_layers(&mut config, layers)?;
    let ids = match &tokenizer {
        Some(t) => t.ids.fit(&config),
        None if config.vocab_size == REAL_VOCAB => REAL_IDS.fit(&config),
        // No tokenizer: the last ids of the table stand in for mask and eos.
        None => SpecialIds {
            eos: config.vocab_size as u32 - 2,
            mask: config.vocab_size as u32 - 1,
            ..REAL_IDS
        }
        .fit(&config),
    };
    let t = Instant::now();
    let weights = random_weights(&config, format.dtype(), seed)?;
    let graph = llada2::build(&config);
    let format_name = matrix_format(&graph, &weights);
    Ok(BenchModel {
        description: format!(
            "{name}, {}, random {format_name} weights",
            layer_note(config.num_hidden_layers, full_layers)
        ),
        config,
        full_layers,
        graph,
        weights,
        ids,
        tokenizer,
        dir: None,
        random_weights: true,
        format: format_name,
        build_seconds: t.elapsed().as_secs_f64(),
    })
}

fn cut_layers(config: &mut Config, layers: Option<usize>) -> Result<()> {
    if let Some(n) = layers {
        if n == 0 || n > config.num_hidden_layers {
            bail!(
                "--layers {n}: the model has {} layers (give 1 to {})",
                config.num_hidden_layers,
                config.num_hidden_layers
            );
        }
        config.num_hidden_layers = n;
    }
    Ok(())
}

fn layer_note(layers: usize, full: usize) -> String {
    if layers == full {
        format!("{layers} layers")
    } else {
        format!("{layers} of {full} layers")
    }
}

/// The dtype most matrix bytes are stored in.
fn matrix_format(graph: &Graph, store: &WeightStore) -> String {
    let mut by: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for w in &graph.weights {
        if let Ok(t) = store.get(&w.name) {
            *by.entry(t.dtype.name()).or_default() += t.bytes().len();
        }
    }
    by.into_iter()
        .max_by_key(|&(_, b)| b)
        .map_or_else(|| "unknown".into(), |(n, _)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_shapes_cut_layers_and_check_them() {
        let m = synthetic("tiny", Some(2), WeightFormat::Bf16, 1).unwrap();
        assert_eq!((m.config.num_hidden_layers, m.full_layers), (2, 3));
        assert!(m.description.contains("2 of 3 layers"), "{}", m.description);
        assert!(m.random_weights && m.format == "bf16");
        m.weights
            .check_shapes(&llada2::expected_tensors(&m.config))
            .unwrap();
        assert!(m.ids.mask < m.config.vocab_size as u32);
        let err = synthetic("tiny", Some(9), WeightFormat::Bf16, 1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("3 layers"), "{err}");
        let q = synthetic("tiny", Some(2), WeightFormat::Q4, 1).unwrap();
        assert_eq!(q.format, "q4");
        assert_eq!(q.weights.get("lm_head.weight").unwrap().dtype, DType::Q4);
        let err = synthetic("huge", None, WeightFormat::Bf16, 1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown shape"), "{err}");
    }

    #[test]
    fn a_directory_shape_takes_its_config_and_special_ids_but_not_its_weights() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llada2");
        let shaped = synthetic(dir.to_str().unwrap(), Some(1), WeightFormat::Bf16, 3).unwrap();
        let real = from_dir(&dir, Some(1)).unwrap();
        assert_eq!(shaped.config, real.config);
        assert_eq!(shaped.ids, real.ids);
        assert!(!real.random_weights && shaped.random_weights);
        let name = "lm_head.weight";
        assert_ne!(
            shaped.weights.get(name).unwrap().bytes(),
            real.weights.get(name).unwrap().bytes()
        );
    }
}

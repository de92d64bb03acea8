//! A model assembled in the browser: there is no directory to open or map, so the worker hands
//! over `config.json` and the tokenizer files as bytes, and each safetensors shard as its header
//! plus a reader of byte ranges (`Blob.slice` through `FileReaderSync` in the worker). Tensor
//! bytes enter wasm memory only when a backend asks for them: the WebGPU backend takes one
//! tensor (or one layer's experts) at a time and lets it go after the upload, so a model larger
//! than wasm memory (4 GiB; LLaDA2.0-mini in q4 is 9.2 GB) still loads.

use std::collections::BTreeMap;
use unmask_core::graph::Graph;
use unmask_core::weights::listing::{self, TensorEntry};
use unmask_core::weights::{DType, Tensor, TensorSource, WeightStore};
use unmask_core::{ChatTokenizer, Config, Error, Model, Result};

/// Byte ranges of one file.
pub trait RangeReader {
    fn read(&self, start: u64, len: usize) -> Result<Vec<u8>>;
}

/// A file already in memory (native tests; small files).
impl RangeReader for Vec<u8> {
    fn read(&self, start: u64, len: usize) -> Result<Vec<u8>> {
        let s = start as usize;
        self.get(s..s + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Weights(format!("bytes {s}..{} are past the end", s + len)))
    }
}

struct Shard {
    name: String,
    reader: Box<dyn RangeReader>,
}

/// The weights of a model, read from its shards tensor by tensor.
pub struct StreamedWeights {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, (usize, TensorEntry)>,
}

impl StreamedWeights {
    fn entry(&self, name: &str) -> Result<&(usize, TensorEntry)> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Weights(format!("missing tensor `{name}`")))
    }
}

impl TensorSource for StreamedWeights {
    /// From the shard header: no read of the tensor's bytes.
    fn dtype(&self, name: &str) -> Result<DType> {
        Ok(self.entry(name)?.1.dtype)
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let (i, e) = self.entry(name)?;
        let shard = &self.shards[*i];
        let bytes = shard.reader.read(e.start, e.len).map_err(|err| {
            Error::Weights(format!("{}: reading tensor `{name}`: {err}", shard.name))
        })?;
        if bytes.len() != e.len {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}`: read {} bytes of {}",
                shard.name,
                bytes.len(),
                e.len
            )));
        }
        Tensor::from_bytes(e.dtype, e.shape.clone(), bytes)
    }
}

impl StreamedWeights {
    /// Every tensor in host memory (the CPU backend computes from host memory anyway).
    pub fn to_store(&self) -> Result<WeightStore> {
        let mut store = WeightStore::default();
        for name in self.tensors.keys() {
            store.insert(name.clone(), self.tensor(name)?);
        }
        Ok(store)
    }

    /// Bytes of all tensors, as stored.
    pub fn bytes(&self) -> u64 {
        self.tensors.values().map(|(_, e)| e.len as u64).sum()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

pub struct ModelLoader {
    config: Config,
    tokenizer: ChatTokenizer,
    weights: StreamedWeights,
}

/// A checked model whose weights are still in their files.
pub struct LoadedModel {
    pub config: Config,
    pub tokenizer: ChatTokenizer,
    pub graph: Graph,
    pub weights: StreamedWeights,
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
            weights: StreamedWeights {
                shards: Vec::new(),
                tensors: BTreeMap::new(),
            },
        })
    }

    /// Bytes to pass to [`ModelLoader::add_shard`] as `head`, from a file's first 8 bytes.
    pub fn header_len(first8: &[u8], file_len: u64, name: &str) -> Result<usize> {
        listing::header_len(first8, file_len, name)
    }

    /// Registers one safetensors file of `file_len` bytes from its header (`head`: its first
    /// [`ModelLoader::header_len`] bytes); `reader` gives the tensors' bytes later.
    pub fn add_shard(
        &mut self,
        name: &str,
        file_len: u64,
        head: &[u8],
        reader: Box<dyn RangeReader>,
    ) -> Result<()> {
        let entries = listing::parse_header(head, file_len, name)?;
        let i = self.weights.shards.len();
        self.weights.shards.push(Shard {
            name: name.to_string(),
            reader,
        });
        for (tensor, e) in entries {
            self.weights.tensors.insert(tensor, (i, e));
        }
        Ok(())
    }

    /// A whole file already in memory.
    pub fn add_shard_bytes(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let len = bytes.len() as u64;
        let n = listing::header_len(&bytes, len, name)?;
        let head = bytes[..n].to_vec();
        self.add_shard(name, len, &head, Box::new(bytes))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Checks every tensor the graph needs against the config (from the headers: no weight
    /// byte is read).
    pub fn finish(self) -> Result<LoadedModel> {
        let tensors = &self.weights.tensors;
        let graph = Model::check_parts(&self.config, &self.tokenizer, &|name| {
            tensors.get(name).map(|(_, e)| e.shape.clone())
        })?;
        Ok(LoadedModel {
            config: self.config,
            tokenizer: self.tokenizer,
            graph,
            weights: self.weights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use unmask_core::weights::load_dir;
    use unmask_tests::fixture;

    fn read(dir: &std::path::Path, f: &str) -> Vec<u8> {
        std::fs::read(dir.join(f)).unwrap()
    }

    fn shard_names(dir: &std::path::Path) -> Vec<String> {
        let index: serde_json::Value =
            serde_json::from_slice(&read(dir, "model.safetensors.index.json")).unwrap();
        let mut shards: Vec<String> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        shards.sort();
        shards.dedup();
        shards
    }

    fn new_loader(dir: &std::path::Path) -> ModelLoader {
        ModelLoader::new(
            &read(dir, "config.json"),
            &read(dir, "tokenizer.json"),
            Some(&read(dir, "tokenizer_config.json")),
        )
        .unwrap()
    }

    /// Counts the bytes read through it.
    struct Counting(Vec<u8>, Rc<Cell<u64>>);

    impl RangeReader for Counting {
        fn read(&self, start: u64, len: usize) -> Result<Vec<u8>> {
            self.1.set(self.1.get() + len as u64);
            self.0.read(start, len)
        }
    }

    #[test]
    fn shards_register_from_their_headers_and_tensors_are_read_on_demand() {
        let dir = fixture("tiny-llada2");
        let shards = shard_names(&dir);
        assert!(shards.len() > 1, "the fixture is sharded");
        let read_bytes = Rc::new(Cell::new(0u64));
        let mut loader = new_loader(&dir);
        for s in &shards {
            let bytes = read(&dir, s);
            let n = ModelLoader::header_len(&bytes[..8], bytes.len() as u64, s).unwrap();
            let head = bytes[..n].to_vec();
            let len = bytes.len() as u64;
            let reader = Box::new(Counting(bytes, read_bytes.clone()));
            loader.add_shard(s, len, &head, reader).unwrap();
        }
        let m = loader.finish().unwrap();
        assert_eq!(m.graph.weights.len(), m.weights.len());
        assert_eq!(read_bytes.get(), 0, "checking the model reads no weight");
        // Every tensor reads back exactly as the directory loader maps it.
        let store = load_dir(&dir).unwrap();
        for (name, t) in store.iter() {
            let got = m.weights.tensor(name).unwrap();
            assert_eq!((got.dtype, &got.shape), (t.dtype, &t.shape));
            assert_eq!(got.bytes(), t.bytes(), "{name}");
        }
        assert_eq!(read_bytes.get(), m.weights.bytes());
    }

    #[test]
    fn a_missing_shard_is_named() {
        let dir = fixture("tiny-llada2");
        let shards = shard_names(&dir);
        let mut partial = new_loader(&dir);
        partial
            .add_shard_bytes(&shards[0], read(&dir, &shards[0]))
            .unwrap();
        let e = partial.finish().err().unwrap().to_string();
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
            .add_shard_bytes("x.safetensors", b"<html>404</html>".to_vec())
            .unwrap_err();
        assert!(e.to_string().contains("x.safetensors"), "{e}");
        // A reader that fails names the shard and the tensor.
        struct Broken;
        impl RangeReader for Broken {
            fn read(&self, _: u64, _: usize) -> Result<Vec<u8>> {
                Err(Error::Weights("the file went away".into()))
            }
        }
        let shards = shard_names(&dir);
        let mut l = new_loader(&dir);
        for s in &shards {
            let bytes = read(&dir, s);
            let n = ModelLoader::header_len(&bytes, bytes.len() as u64, s).unwrap();
            l.add_shard(s, bytes.len() as u64, &bytes[..n], Box::new(Broken))
                .unwrap();
        }
        let m = l.finish().unwrap();
        let e = m
            .weights
            .tensor("lm_head.weight")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("lm_head.weight") && e.contains("went away"),
            "{e}"
        );
    }
}

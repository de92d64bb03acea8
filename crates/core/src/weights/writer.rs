//! Writing safetensors files tensor by tensor: the header is computed from the planned dtypes
//! and shapes, then each tensor's bytes are produced, written and dropped, so memory holds one
//! tensor at a time. Large models are split into shards with a Hugging Face index.

use super::DType;
use crate::error::{Error, Result};
use crate::quant::meta;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tensor to be written: its name, stored dtype and logical shape.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    pub fn bytes(&self) -> usize {
        self.dtype.bytes_for_shape(&self.shape)
    }
}

/// safetensors' name of a stored dtype (quantized tensors are raw bytes).
fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::Q8_0 | DType::Q4 => "U8",
    }
}

/// The header of one file holding `tensors` in order, with `extra` metadata.
fn header(tensors: &[&PlannedTensor], extra: &BTreeMap<String, String>) -> Vec<u8> {
    let mut metadata: serde_json::Map<String, serde_json::Value> = extra
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    metadata.insert("format".into(), "pt".into());
    let mut h = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let n = t.bytes();
        let shape = match t.dtype.quant() {
            Some(f) => {
                let e = meta::Entry {
                    format: f,
                    shape: t.shape.clone(),
                };
                metadata.insert(meta::key(&t.name), e.to_json().into());
                vec![n]
            }
            None => t.shape.clone(),
        };
        h.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": st_dtype(t.dtype),
                "shape": shape,
                "data_offsets": [offset, offset + n],
            }),
        );
        offset += n;
    }
    let mut out = serde_json::Map::new();
    out.insert("__metadata__".into(), metadata.into());
    out.extend(h);
    let mut bytes = serde_json::to_vec(&serde_json::Value::Object(out)).expect("serializable");
    // The data starts 8-byte aligned (after the 8-byte length and the header), as the format
    // recommends.
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    bytes
}

/// Writes `tensors` into `dir` as `model.safetensors`, or as `model-0000N-of-0000M.safetensors`
/// shards of at most `max_shard_bytes` of data each plus `model.safetensors.index.json`.
/// `data(i)` produces tensor `i`'s bytes (called once per tensor, in order); `extra` metadata goes
/// into every file. Files are written under a `.partial` name and renamed when complete; on an
/// error the partial files are removed. Returns the files written.
pub fn write_safetensors(
    dir: &Path,
    tensors: &[PlannedTensor],
    extra: &BTreeMap<String, String>,
    max_shard_bytes: usize,
    data: &mut dyn FnMut(usize) -> Result<Vec<u8>>,
) -> Result<Vec<PathBuf>> {
    // Greedy shards in the given order; a tensor larger than the limit gets a shard of its own.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.bytes();
        if size > 0 && size + n > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += n;
    }
    let count = shards.len();
    let names: Vec<String> = (0..count)
        .map(|s| {
            if count == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", s + 1)
            }
        })
        .collect();
    let mut written = Vec::new();
    let result = (|| {
        for (shard, file) in shards.iter().zip(&names) {
            let path = dir.join(file);
            let partial = dir.join(format!("{file}.partial"));
            written.push(partial.clone());
            write_one(&partial, shard, tensors, extra, data)?;
            std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))?;
            *written.last_mut().expect("pushed") = path;
        }
        if count > 1 {
            let total: usize = tensors.iter().map(PlannedTensor::bytes).sum();
            let mut map = BTreeMap::new();
            for (shard, file) in shards.iter().zip(&names) {
                for &i in shard {
                    map.insert(tensors[i].name.clone(), file.clone());
                }
            }
            let index = serde_json::json!({
                "metadata": { "total_size": total },
                "weight_map": map,
            });
            let path = dir.join("model.safetensors.index.json");
            let text = serde_json::to_string_pretty(&index).expect("serializable");
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            written.push(path);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

fn write_one(
    path: &Path,
    shard: &[usize],
    tensors: &[PlannedTensor],
    extra: &BTreeMap<String, String>,
    data: &mut dyn FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let io = |e| Error::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let planned: Vec<&PlannedTensor> = shard.iter().map(|&i| &tensors[i]).collect();
    let h = header(&planned, extra);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for &i in shard {
        let bytes = data(i)?;
        let t = &tensors[i];
        if bytes.len() != t.bytes() {
            return Err(Error::Weights(format!(
                "tensor `{}`: produced {} bytes, planned {}",
                t.name,
                bytes.len(),
                t.bytes()
            )));
        }
        w.write_all(&bytes).map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_tensor, QuantFormat};
    use crate::weights::{load_dir, Tensor};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("unmask-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn quantized_and_plain_tensors_round_trip_through_files() {
        let values: Vec<f32> = (0..5 * 40).map(|i| (i as f32 * 0.1).cos()).collect();
        let plain = Tensor::from_f32(vec![5, 40], &values).unwrap();
        let q4 = quantize_tensor(QuantFormat::Q4, &plain).unwrap().0;
        let q8 = quantize_tensor(QuantFormat::Q8_0, &plain).unwrap().0;
        let src = [("a.plain", &plain), ("b.q4", &q4), ("c.q8", &q8)];
        let planned: Vec<PlannedTensor> = src
            .iter()
            .map(|(n, t)| PlannedTensor {
                name: n.to_string(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            })
            .collect();
        for (label, max) in [("one", usize::MAX), ("sharded", 1)] {
            let dir = tmp(label);
            let files = write_safetensors(&dir, &planned, &BTreeMap::new(), max, &mut |i| {
                Ok(src[i].1.bytes().to_vec())
            })
            .unwrap();
            assert_eq!(files.len(), if max == 1 { 4 } else { 1 });
            let store = load_dir(&dir).unwrap();
            for (n, t) in &src {
                let back = store.get(n).unwrap();
                assert_eq!((back.dtype, &back.shape), (t.dtype, &t.shape), "{n}");
                assert_eq!(back.bytes(), t.bytes(), "{n}");
            }
            // The files are valid safetensors for other readers too.
            for f in files
                .iter()
                .filter(|f| f.extension().unwrap() == "safetensors")
            {
                let bytes = std::fs::read(f).unwrap();
                safetensors::SafeTensors::deserialize(&bytes).unwrap();
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_failing_tensor_leaves_no_files() {
        let dir = tmp("fail");
        let planned = vec![PlannedTensor {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![2],
        }];
        let r = write_safetensors(&dir, &planned, &BTreeMap::new(), usize::MAX, &mut |_| {
            Ok(vec![0u8; 3])
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn u8_without_metadata_is_refused() {
        let dir = tmp("u8");
        let bytes = safetensors::serialize(
            [(
                "x",
                safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![4], &[1u8; 4])
                    .unwrap(),
            )],
            None,
        )
        .unwrap();
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        let err = load_dir(&dir).err().unwrap().to_string();
        assert!(err.contains("without quantization metadata"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

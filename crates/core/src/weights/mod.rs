//! Weights as they sit on disk: safetensors shards (memory-mapped on native), their dtypes, and
//! the check that every tensor the graph needs exists with the shape the config implies.

mod dtype;
pub mod listing;
mod safetensors_dir;
pub mod writer;

pub use dtype::DType;
pub use safetensors_dir::{add_shard, load_dir, load_files, weight_files};

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bytes that back one or more tensors: a memory map or an owned buffer.
pub enum Storage {
    #[cfg(not(target_arch = "wasm32"))]
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    pub fn bytes(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// One tensor: dtype, shape, and a byte range in a shared storage.
#[derive(Clone)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    storage: Arc<Storage>,
    start: usize,
    len: usize,
}

impl Tensor {
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<Storage>,
        start: usize,
        len: usize,
    ) -> Result<Self> {
        let want = dtype.bytes_for_shape(&shape);
        if want != len {
            return Err(Error::Weights(format!(
                "{len} bytes do not hold a {dtype:?} tensor of shape {shape:?} ({want} bytes)"
            )));
        }
        if start + len > storage.bytes().len() {
            return Err(Error::Weights(
                "tensor data lies beyond the end of its file".into(),
            ));
        }
        Ok(Tensor {
            dtype,
            shape,
            storage,
            start,
            len,
        })
    }

    /// A tensor that owns its bytes (synthetic models, quantizer output, tests).
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len();
        Tensor::new(dtype, shape, Arc::new(Storage::Owned(bytes)), 0, len)
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Tensor::from_bytes(DType::F32, shape, bytemuck::cast_slice(values).to_vec())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.start..self.start + self.len]
    }

    /// Whether every value is finite (raw bits for float formats, no widening).
    pub fn is_finite(&self) -> bool {
        let b = self.bytes();
        match self.dtype {
            DType::BF16 => b
                .chunks_exact(2)
                .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 != 0x7f80),
            DType::F16 => b
                .chunks_exact(2)
                .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 != 0x7c00),
            DType::F32 => b
                .chunks_exact(4)
                .all(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 != 0x7f80_0000),
            _ => self.to_f32().iter().all(|v| v.is_finite()),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Widens to f32 (bf16 and f16 exactly; quantized formats are dequantized).
    pub fn to_f32(&self) -> Vec<f32> {
        self.dtype.to_f32_shaped(self.bytes(), &self.shape)
    }

    /// The packed planes of a quantized tensor (`None` for f32/f16/bf16).
    pub fn packed(&self) -> Option<crate::quant::Packed<'_>> {
        let f = self.dtype.quant()?;
        let cols = self.shape.last().copied().unwrap_or(1);
        let rows = self.shape[..self.shape.len().saturating_sub(1)]
            .iter()
            .product();
        // Tensor::new checked the byte count against the shape.
        crate::quant::Packed::new(f, rows, cols, self.bytes()).ok()
    }
}

/// Where a backend takes its weights from: a [`WeightStore`] holding them all, or a source that
/// reads each tensor when asked (the browser's, see [`listing`]), so a backend that copies the
/// weights to a device never needs them all in host memory at once.
pub trait TensorSource {
    fn tensor(&self, name: &str) -> Result<Tensor>;

    /// A tensor's stored dtype, without reading its data where the source can tell.
    fn dtype(&self, name: &str) -> Result<DType> {
        self.tensor(name).map(|t| t.dtype)
    }
}

impl TensorSource for WeightStore {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.get(name).cloned()
    }

    fn dtype(&self, name: &str) -> Result<DType> {
        self.get(name).map(|t| t.dtype)
    }
}

/// Checks that every expected tensor exists (`shape_of` gives its shape) with exactly the
/// expected shape.
pub fn check_shapes(
    expected: &[(String, Vec<usize>)],
    shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> Result<()> {
    for (name, shape) in expected {
        let have =
            shape_of(name).ok_or_else(|| Error::Weights(format!("missing tensor `{name}`")))?;
        if &have != shape {
            return Err(Error::Weights(format!(
                "tensor `{name}` has shape {have:?}, the config implies {shape:?}"
            )));
        }
    }
    Ok(())
}

/// All tensors of a model by name.
#[derive(Default, Clone)]
pub struct WeightStore {
    tensors: BTreeMap<String, Tensor>,
}

impl WeightStore {
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Weights(format!("missing tensor `{name}`")))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Checks that every expected tensor exists with exactly the expected shape.
    pub fn check_shapes(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        check_shapes(expected, &|name| {
            self.tensors.get(name).map(|t| t.shape.clone())
        })
    }

    /// The first tensor (by name) holding NaN or inf, read in its stored format (quantized ones
    /// through their scales). Reads every byte: for explaining a non-finite output, or a check.
    pub fn first_non_finite(&self) -> Option<String> {
        self.tensors
            .iter()
            .find(|(_, t)| !t.is_finite())
            .map(|(name, _)| name.clone())
    }

    /// Total bytes per dtype name, for `inspect`.
    pub fn bytes_by_dtype(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.tensors.values() {
            *m.entry(t.dtype.name().to_string()).or_insert(0) += t.len;
        }
        m
    }
}

//! unmask-cuda: the LLaDA2 graph on NVIDIA GPUs through cudarc.
//!
//! - [`probe`]: whether this machine can run it (libcuda, NVRTC, a device), as an error message
//!   instead of the panic cudarc raises when a library is missing.
//! - [`CudaBackend`]: weights, KV cache and every activation on the device; the kernels of
//!   `kernels/*.cu` compiled by NVRTC to a cubin for the device at first load and cached on disk
//!   (compile.rs, module_cache.rs); a step shape seen a second time is captured as a CUDA
//!   graph and replayed after that (shapes.rs), with the per-step scalars in a device buffer the
//!   host rewrites before a replay; long prompts run in chunks of whole blocks.
//!
//! Everything links at run time (`dynamic-loading`): the crate builds and its tests run on machines
//! without CUDA, where they report the device as absent.

mod availability;
mod backend;
pub mod compile;
mod device;
pub mod emulator;
pub mod kernels;
pub mod module_cache;
pub mod params;
pub mod plan;
mod record;
mod shapes;
mod weights;

pub use availability::{probe, survey, DeviceInfo, Survey};
pub use backend::{CudaBackend, CudaOptions, MAX_SLOTS};
pub use compile::Toolchain;
pub use record::supports;
pub use weights::{RandomFormat, WeightFormat};

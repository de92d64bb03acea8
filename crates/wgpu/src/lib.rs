//! unmask-wgpu: the LLaDA2 step on wgpu (Vulkan, Metal, DX12, WebGPU).
//!
//! The graph of `unmask_core::model::llada2` is compiled at load into pipelines
//! ([`kernels`]), weights split to fit storage bindings ([`weights`], [`format`]), an activation
//! arena ([`arena`]), a KV cache ([`kv`]) and a list of dispatches ([`program`]); each step
//! replays that list, chunk by chunk ([`chunks`]), in one command encoder and one submission
//! ([`backend`]). Shaders live in `shaders/*.wgsl` ([`shaders`]).

pub mod arena;
pub mod backend;
pub mod device;
pub mod format;
pub mod kernels;
pub mod kv;
mod load;
pub mod program;
mod readback;
pub mod shaders;
mod timer;
pub mod weights;

pub use backend::{WgpuBackend, WgpuOptions};
#[cfg(not(target_arch = "wasm32"))]
pub use device::{list_adapters, probe, probe_or_skip, REQUIRE_ENV};
pub use device::{list_adapters_async, probe_async, AdapterReport, Gpu, ADAPTER_ENV};
pub use load::supports;

//! unmask-wgsl: the LLaDA2 step on wgpu (Vulkan, Metal, DX12, WebGPU).
pub mod format;
pub mod shaders;

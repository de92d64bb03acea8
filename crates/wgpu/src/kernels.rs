//! Compute pipelines, created once at load: every entry point the graph needs, per weight format
//! where it reads matrices, with explicit bind group layouts (group 0: the op's buffers and
//! parameters; group 1: the step parameters at a dynamic offset per chunk).

use crate::format::WeightFormat;
use crate::shaders::{module_source, Family};
use std::collections::BTreeMap;

/// How an entry point uses one binding of group 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The op's parameters. Read-only storage rather than uniform: lavapipe recompiles a shader
    /// whose loops depend on uniform values for every new value it sees ("inline uniforms"),
    /// which cost tens of milliseconds per dispatch; the step parameters (group 1) likewise.
    Params,
    Read,
    ReadWrite,
}

/// One entry point and the bindings it uses, as the WGSL declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    Embed,
    RmsNorm,
    Matmul,
    MatmulNarrow,
    MoeGateUp,
    MoeDown,
    QkNormRope,
    KvStore,
    Attention,
    Add,
    SwiGlu,
    TakeLastRows,
    MoeRoute,
    MoeRouteBlock,
    MoeGroup,
    MoeCombine,
    Sample,
    SampleSeeded,
}

use Bind::{Params as U, Read as R, ReadWrite as W};

impl Kernel {
    pub fn family(self) -> Family {
        use Kernel::*;
        match self {
            Embed => Family::Embed,
            RmsNorm => Family::Norm,
            Matmul | MatmulNarrow | MoeGateUp | MoeDown => Family::MatMul,
            QkNormRope => Family::Rope,
            KvStore | Attention => Family::Attention,
            Add | SwiGlu | TakeLastRows => Family::Elementwise,
            MoeRoute | MoeRouteBlock | MoeGroup | MoeCombine => Family::Moe,
            Sample | SampleSeeded => Family::Sample,
        }
    }

    pub fn entry(self) -> &'static str {
        use Kernel::*;
        match self {
            Embed => "embed",
            RmsNorm => "rms_norm",
            Matmul => "matmul",
            MatmulNarrow => "matmul_narrow",
            MoeGateUp => "moe_gate_up",
            MoeDown => "moe_down",
            QkNormRope => "qk_norm_rope",
            KvStore => "kv_store",
            Attention => "attention",
            Add => "add",
            SwiGlu => "swiglu",
            TakeLastRows => "take_last_rows",
            MoeRoute => "moe_route",
            MoeRouteBlock => "moe_route_block",
            MoeGroup => "moe_group",
            MoeCombine => "moe_combine",
            Sample => "sample",
            SampleSeeded => "sample_seeded",
        }
    }

    /// (binding, use) of every group-0 binding, in the order bind groups list them.
    pub fn bindings(self) -> &'static [(u32, Bind)] {
        use Kernel::*;
        match self {
            Embed | Matmul | MatmulNarrow => &[(0, U), (1, R), (2, R), (3, W)],
            RmsNorm | Add | SwiGlu => &[(0, U), (1, R), (2, R), (3, W)],
            MoeGateUp => &[(1, R), (2, R), (3, W), (4, U), (5, R), (6, R)],
            // `load_item_rows` (shared with moe_gate_up) names the slot table even when unused.
            MoeDown => &[(1, R), (2, R), (3, W), (4, U), (5, R), (6, R)],
            QkNormRope => &[(0, U), (1, W), (2, R), (3, R)],
            KvStore => &[(0, U), (1, R), (2, W), (3, W)],
            Attention => &[(0, U), (1, R), (4, R), (5, R), (6, W)],
            TakeLastRows => &[(0, U), (1, R), (3, W)],
            MoeRoute | MoeRouteBlock => &[(0, U), (1, R), (2, R), (3, W), (4, W), (5, W)],
            MoeGroup => &[(10, U), (11, R), (12, R), (13, W), (14, W), (15, W)],
            MoeCombine => &[(20, U), (11, R), (21, R), (22, R), (23, R), (24, W)],
            Sample | SampleSeeded => &[(0, U), (1, R), (2, W)],
        }
    }
}

pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// The pipelines of one model, keyed by kernel and (for matrix readers) weight format.
pub struct Kernels {
    pub step_layout: wgpu::BindGroupLayout,
    map: BTreeMap<(Kernel, Option<WeightFormat>), Pipeline>,
}

/// Bytes of the group-1 step parameters (`StepParams` in step.wgsl).
pub const STEP_PARAMS_BYTES: u64 = unmask_core::step_params::BYTES as u64;

impl Kernels {
    /// Builds `wanted` (kernel, format) pairs; shader modules are shared by the entry points of
    /// one (family, format).
    pub fn new(device: &wgpu::Device, wanted: &[(Kernel, Option<WeightFormat>)]) -> Kernels {
        let step_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("step"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(STEP_PARAMS_BYTES),
                },
                count: None,
            }],
        });
        let mut modules: BTreeMap<(Family, Option<WeightFormat>), wgpu::ShaderModule> =
            BTreeMap::new();
        let mut map = BTreeMap::new();
        for &(kernel, format) in wanted {
            if map.contains_key(&(kernel, format)) {
                continue;
            }
            let family = kernel.family();
            let module = modules.entry((family, format)).or_insert_with(|| {
                let label = match format {
                    Some(f) => format!("{}.{}", family.file_stem(), f.name()),
                    None => family.file_stem().to_string(),
                };
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(module_source(family, format).into()),
                })
            });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
                .bindings()
                .iter()
                .map(|&(binding, b)| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: match b {
                            Bind::Params => wgpu::BufferBindingType::Storage { read_only: true },
                            Bind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                            Bind::ReadWrite => {
                                wgpu::BufferBindingType::Storage { read_only: false }
                            }
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel.entry()),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel.entry()),
                bind_group_layouts: &[Some(&layout), Some(&step_layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry()),
                layout: Some(&pipeline_layout),
                module,
                entry_point: Some(kernel.entry()),
                compilation_options: Default::default(),
                cache: None,
            });
            map.insert((kernel, format), Pipeline { pipeline, layout });
        }
        Kernels { step_layout, map }
    }

    pub fn get(&self, kernel: Kernel, format: Option<WeightFormat>) -> &Pipeline {
        self.map
            .get(&(kernel, format))
            .unwrap_or_else(|| panic!("pipeline {kernel:?}/{format:?} was not built at load"))
    }
}

//! Compute pipelines, created once at load: every entry point the graph needs, per weight format
//! where it reads matrices, with explicit bind group layouts (group 0: the op's buffers and
//! parameters; group 1: the step parameters at a dynamic offset per chunk).

use crate::format::WeightFormat;
use crate::shaders::{module_source, Family, ModuleOptions, EXPERT_PART_BINDING};
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

use Bind::{Params as U, Read as R, ReadWrite as W};

/// Declares `Kernel` from one row per entry point: its family (the shader file it lives in), its
/// WGSL name and the (binding, use) of every group-0 binding, in the order bind groups list
/// them. A new kernel is one row.
macro_rules! kernel_table {
    ($($k:ident: $family:ident, $entry:literal, [$(($b:literal, $u:ident)),*];)*) => {
        /// One entry point and the bindings it uses, as the WGSL declares them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Kernel {
            $($k,)*
        }

        impl Kernel {
            #[cfg(test)]
            pub const ALL: &[Kernel] = &[$(Kernel::$k),*];

            pub fn family(self) -> Family {
                match self {
                    $(Kernel::$k => Family::$family,)*
                }
            }

            pub fn entry(self) -> &'static str {
                match self {
                    $(Kernel::$k => $entry,)*
                }
            }

            pub fn bindings(self) -> &'static [(u32, Bind)] {
                match self {
                    $(Kernel::$k => &[$(($b, $u)),*],)*
                }
            }

            /// Whether the kernel reads expert stacks through `we_load4`, and so also binds
            /// the extra parts (`EXPERT_PART_BINDING + p`, read-only) when a dispatch reads
            /// more than one.
            pub fn reads_expert_parts(self) -> bool {
                matches!(
                    self,
                    Kernel::MoeGateUp
                        | Kernel::MoeDown
                        | Kernel::MoeGateUpMv
                        | Kernel::MoeDownMv
                        | Kernel::MoeGateUpMvQ
                        | Kernel::MoeDownMvQ
                )
            }
        }
    };
}

kernel_table! {
    Embed: Embed, "embed", [(0, U), (1, R), (2, R), (3, W)];
    RmsNorm: Norm, "rms_norm", [(0, U), (1, R), (2, R), (3, W)];
    AddRmsNorm: Norm, "add_rms_norm", [(0, U), (1, R), (2, R), (3, W), (4, R), (5, W)];
    // `int8_dots`: kernels that also write what they wrote as 8-bit blocks (at 30, `xq_out` in
    // every module, int8/quantize.wgsl) for the integer product after them (int8.rs, `Folds`).
    RmsNormQ: Norm, "rms_norm_q", [(0, U), (1, R), (2, R), (3, W), (30, W)];
    AddRmsNormQ: Norm, "add_rms_norm_q", [(0, U), (1, R), (2, R), (3, W), (4, R), (5, W), (30, W)];
    Matmul: MatMul, "matmul", [(0, U), (1, R), (2, R), (3, W)];
    Matvec8: MatMul, "matvec8", [(0, U), (1, R), (2, R), (3, W)];
    Matvec32: MatMul, "matvec32", [(0, U), (1, R), (2, R), (3, W)];
    MoeGateUp: MatMul, "moe_gate_up", [(1, R), (2, R), (3, W), (4, U), (5, R), (6, R)];
    // `load_item_rows` (shared with moe_gate_up) names the slot table even when unused.
    MoeDown: MatMul, "moe_down", [(1, R), (2, R), (3, W), (4, U), (5, R), (6, R)];
    MoeGateUpMv: MatMul, "moe_gate_up_mv", [(1, R), (2, R), (3, W), (4, U), (5, R), (6, R)];
    // Reads no slot table; bound like moe_down so that one lowering binds both.
    MoeDownMv: MatMul, "moe_down_mv", [(1, R), (2, R), (3, W), (4, U), (5, R), (6, R)];
    // `int8_dots` (q8_0 / q4 modules only, matvec/int8.wgsl): rows of `x` quantized into `xq`
    // (written at 30, read at 9), and the matrix-vector kernels' integer forms reading them.
    QuantizeRows: MatMul, "quantize_rows", [(2, R), (8, U), (30, W)];
    Matvec8Q: MatMul, "matvec8_q", [(0, U), (1, R), (3, W), (9, R)];
    Matvec32Q: MatMul, "matvec32_q", [(0, U), (1, R), (3, W), (9, R)];
    MoeGateUpMvQ: MatMul, "moe_gate_up_mv_q", [(1, R), (3, W), (4, U), (5, R), (6, R), (9, R)];
    MoeDownMvQ: MatMul, "moe_down_mv_q", [(1, R), (3, W), (4, U), (5, R), (6, R), (9, R)];
    QkNormRope: Rope, "qk_norm_rope", [(0, U), (1, W), (2, R), (3, R), (4, W), (5, W)];
    KvStore: Attention, "kv_store", [(0, U), (1, R), (2, W), (3, W)];
    // Split-KV partials at 7: bound for `attention` too, so that one bind group serves both.
    Attention: Attention, "attention", [(0, U), (1, R), (4, R), (5, R), (6, W), (7, W)];
    AttentionSplit: Attention, "attention_split", [(0, U), (1, R), (4, R), (5, R), (6, W), (7, W)];
    AttentionCombine: Attention, "attention_combine", [(0, U), (6, W), (7, W)];
    AttentionQ: Attention, "attention_q", [(0, U), (1, R), (4, R), (5, R), (6, W), (7, W), (30, W)];
    AttentionCombineQ: Attention, "attention_combine_q", [(0, U), (6, W), (7, W), (30, W)];
    Add: Elementwise, "add", [(0, U), (1, R), (2, R), (3, W)];
    SwiGlu: Elementwise, "swiglu", [(0, U), (1, R), (2, R), (3, W)];
    TakeLastRows: Elementwise, "take_last_rows", [(0, U), (1, R), (3, W)];
    MoeRoute: Moe, "moe_route", [(0, U), (1, R), (2, R), (3, W), (4, W), (5, W)];
    MoeRouteLogits: Moe, "moe_route_logits", [(0, U), (2, R), (3, W), (4, W), (5, W), (6, R), (7, R), (8, W)];
    MoeRouteBlock: Moe, "moe_route_block", [(0, U), (1, R), (2, R), (3, W), (4, W), (5, W)];
    MoeGroup: Moe, "moe_group", [(10, U), (11, R), (12, R), (13, W), (14, W), (15, W)];
    MoeCombine: Moe, "moe_combine", [(20, U), (11, R), (21, R), (22, R), (23, R), (24, W)];
    MoeCombineResidual: Moe, "moe_combine_residual", [(20, U), (11, R), (21, R), (22, R), (23, R), (24, W), (25, R), (26, R), (27, W)];
    MoeCombineResidualQ: Moe, "moe_combine_residual_q", [(20, U), (11, R), (21, R), (22, R), (23, R), (24, W), (25, R), (26, R), (27, W), (30, W)];
    Sample: Sample, "sample", [(0, U), (1, R), (2, W)];
    SampleSeeded: Sample, "sample_seeded", [(0, U), (1, R), (2, W)];
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

/// Bytes of the group-1 parameters of a pass (`StepParams` in step.wgsl): the header, then the
/// table of its sequences.
pub const PASS_PARAMS_BYTES: u64 = (unmask_core::step_params::BYTES
    + unmask_core::step_params::SEQ_BYTES * unmask_core::step_params::MAX_PASS_SEQS)
    as u64;

impl Kernels {
    /// Builds `wanted` (kernel, format) pairs; shader modules are shared by the entry points of
    /// one (family, format). Without `runtime_checks` the modules are created trusted: naga adds
    /// no index clamps and no loop counters (the op suite runs them so, and every index the
    /// shaders compute is bounded by the sizes they are given). `opts`: the expert kernels'
    /// stack bindings a dispatch, the matrix-vector kernels' reduction.
    pub fn new(
        device: &wgpu::Device,
        wanted: &[(Kernel, Option<WeightFormat>)],
        runtime_checks: bool,
        opts: ModuleOptions,
    ) -> Kernels {
        let step_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("step"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(PASS_PARAMS_BYTES),
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
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(module_source(family, format, &opts).into()),
                };
                if runtime_checks {
                    device.create_shader_module(desc)
                } else {
                    // SAFETY: the kernels index storage only below the lengths their parameters
                    // give (checked against the buffers at load) and every loop has a bound;
                    // the op suite, with odd shapes and split bindings, runs these modules.
                    unsafe {
                        device.create_shader_module_trusted(
                            desc,
                            wgpu::ShaderRuntimeChecks::unchecked(),
                        )
                    }
                }
            });
            let extra_parts = if kernel.reads_expert_parts() {
                (1..opts.expert_parts as u32)
                    .map(|p| (EXPERT_PART_BINDING + p, Bind::Read))
                    .collect()
            } else {
                Vec::new()
            };
            let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
                .bindings()
                .iter()
                .chain(&extra_parts)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the kernel table names an entry point of its family's module and only
    /// bindings that module declares (a q8_0 module with the integer forms).
    #[test]
    fn the_kernel_table_matches_the_shaders() {
        for &k in Kernel::ALL {
            let src = module_source(
                k.family(),
                Some(WeightFormat::Q8_0),
                &ModuleOptions {
                    int8: true,
                    ..ModuleOptions::default()
                },
            );
            assert!(
                src.contains(&format!("fn {}(", k.entry())),
                "{:?}: no `fn {}` in {}.wgsl",
                k,
                k.entry(),
                k.family().file_stem()
            );
            for (b, _) in k.bindings() {
                assert!(
                    src.contains(&format!("@binding({b})")),
                    "{k:?}: binding {b} is not declared"
                );
            }
        }
    }
}

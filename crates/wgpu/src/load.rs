//! Loading: opening the adapter, checking the graph against the kernels' limits, uploading the
//! weights (split to fit bindings), sizing chunks so every activation fits one binding, planning
//! the arena, and compiling the graph into dispatches.

use crate::arena;
use crate::backend::{WgpuBackend, WgpuOptions};
use crate::device::{Gpu, ADAPTER_ENV};
use crate::kernels::{Kernels, PASS_PARAMS_BYTES};
use crate::kv::KvCache;
use crate::program::fuse::Fusions;
use crate::program::{self, Context, MoeScratch, PLAN_HEAD, TILE_ROWS};
use crate::shaders::{ModuleOptions, MAX_EXPERT_PARTS};
use crate::weights::{self, DeviceMatrix, ExpertStacks};
use unmask_core::backend::StepStats;
use unmask_core::graph::{Graph, Op, WeightRole};
use unmask_core::weights::{Tensor, TensorSource};
use unmask_core::{Error, Result};

fn check_shape(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape != want {
        return Err(Error::Weights(format!(
            "tensor `{name}` has shape {:?}, expected {want:?}",
            t.shape
        )));
    }
    Ok(())
}

/// Limits of the kernels, checked at load so a model they cannot run is a clear error.
/// Whether the WGSL kernels can run `op` (`Err(why)` past one of their limits).
pub fn supports(_graph: &Graph, op: &Op) -> std::result::Result<(), String> {
    match op {
        Op::Attention { heads, .. } | Op::QkNormRope { heads, .. } => {
            if heads.dim > 256 {
                return Err(format!("head_dim {} > 256 is not supported", heads.dim));
            }
            if heads.kv == 0 || heads.q % heads.kv != 0 {
                return Err(format!(
                    "{} query heads do not share {} kv heads evenly",
                    heads.q, heads.kv
                ));
            }
        }
        Op::MoeRoute { routing: r, .. }
            if r.top_k == 0
                || r.top_k > r.num_experts
                // moe_combine orders a token's experts in workgroup memory.
                || r.top_k > 64
                || match r.block {
                    // moe_route_block keeps one value per expert in workgroup memory.
                    Some(b) => r.num_experts > 1024 || b.capacity > r.num_experts || b.size == 0,
                    None => {
                        r.n_group == 0
                            || r.n_group > 64
                            || r.num_experts % r.n_group != 0
                            || r.topk_group > r.n_group
                    }
                } =>
        {
            return Err(format!("unsupported routing {r:?}"));
        }
        _ => {}
    }
    Ok(())
}

fn check_graph(graph: &Graph) -> Result<()> {
    for op in &graph.ops {
        supports(graph, op).map_err(|why| Error::backend("wgpu", why))?;
    }
    Ok(())
}

pub(crate) fn storage(
    device: &wgpu::Device,
    label: &str,
    bytes: u64,
    extra: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE | extra,
        mapped_at_creation: false,
    })
}

impl WgpuBackend {
    /// Opens the adapter, uploads the graph's weights from `store` and compiles the graph.
    /// `progress(done, total)` is called per weight. Each tensor is taken from `store` once, when
    /// it is uploaded (experts one at a time), and let go right after: with a source that reads
    /// tensors on demand, host memory holds about the largest tensor, not the model.
    pub async fn new_async(
        graph: Graph,
        store: &dyn TensorSource,
        options: &WgpuOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        check_graph(&graph)?;
        if options.slots > MAX_SLOTS {
            return Err(Error::Invalid(format!(
                "{} KV-cache slots asked of the wgpu backend; it holds at most {MAX_SLOTS}",
                options.slots
            )));
        }
        let env = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty());
        let name = options.adapter.clone().or(env);
        let gpu = Gpu::open(name.as_deref()).await?;
        let device = gpu.device.clone();
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = Self::build(gpu, graph, store, options, progress);
        let invalid = invalid.pop().await;
        let oom = oom.pop().await;
        if let Some(e) = oom.or(invalid) {
            return Err(Error::backend("wgpu", format!("loading the model: {e}")));
        }
        built
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(
        graph: Graph,
        store: &dyn TensorSource,
        options: &WgpuOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        pollster::block_on(Self::new_async(graph, store, options, progress))
    }

    fn build(
        gpu: Gpu,
        graph: Graph,
        store: &dyn TensorSource,
        options: &WgpuOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let device = gpu.device.clone();
        let max_binding = gpu.max_binding();
        let weight_binding = options
            .weight_binding_limit
            .map_or(max_binding, |m| m.min(max_binding))
            & !3;
        // Matrix parts also keep dispatch grids within the per-dimension limit.
        let max_rows_binding = (gpu.limits.max_compute_workgroups_per_dimension as usize
            * program::TILE_FEATURES)
            .max(1);
        // Expert-stack bindings one expert dispatch reads: as many as the per-stage storage
        // limit leaves beside the kernels' own six (x, out, params, plan, slots, step).
        let expert_parts = (gpu.limits.max_storage_buffers_per_shader_stage as usize)
            .saturating_sub(6)
            .clamp(1, MAX_EXPERT_PARTS)
            .min(options.max_expert_parts.unwrap_or(MAX_EXPERT_PARTS).max(1));
        let split_row_blocks = options.split_row_blocks.unwrap_or(!gpu.is_software());
        let nw = graph.weights.len();
        let nops = graph.ops.len();
        let mut matrices: Vec<Option<DeviceMatrix>> = (0..nw).map(|_| None).collect();
        let mut vectors: Vec<Option<wgpu::Buffer>> = (0..nw).map(|_| None).collect();
        let mut op_experts: Vec<Option<ExpertStacks>> = (0..nops).map(|_| None).collect();
        let mut op_norms: Vec<Option<wgpu::Buffer>> = (0..nops).map(|_| None).collect();
        let mut weight_bytes = 0u64;
        let mut done = 0usize;
        let tensor = |id: unmask_core::graph::WeightId| -> Result<Tensor> {
            let d = graph.weight(id);
            let t = store.tensor(&d.name)?;
            check_shape(&d.name, &t, &d.shape)?;
            Ok(t)
        };
        let up = weights::Uploader {
            device: &device,
            queue: &gpu.queue,
        };
        let mut tick = |done: &mut usize| {
            *done += 1;
            progress((*done).min(nw), nw);
        };
        // Ops computed inside others' dispatches (program/fuse.rs). A shared expert joins the
        // routed stack only in their dtype (asked of the source, which reads no data for it).
        let dtype = |w: unmask_core::graph::WeightId| store.dtype(&graph.weight(w).name);
        let fusions = Fusions::find(
            &graph,
            &mut |shared, routed| match (dtype(shared), dtype(routed)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
            weight_binding,
            gpu.limits.max_storage_buffers_per_shader_stage as usize,
        );
        for (i, op) in graph.ops.iter().enumerate() {
            // An absorbed op's matrices go up with its host (the shared expert's in the
            // stack, the router's as f32); its vectors (a fused norm's weight) as any op's.
            let absorbed = fusions.absorbed(i);
            match op {
                Op::QkNormRope {
                    q_norm,
                    k_norm,
                    heads,
                    ..
                } => {
                    let d = heads.dim;
                    let mut v = vec![0f32; 2 * d];
                    for (which, w) in [(0, q_norm), (1, k_norm)] {
                        if let Some(w) = w {
                            let t = tensor(*w)?;
                            v[which * d..(which + 1) * d].copy_from_slice(&t.to_f32());
                            tick(&mut done);
                        }
                    }
                    let t = Tensor::from_f32(vec![2 * d], &v)?;
                    let b = weights::upload_vector(up, "qk_norms", &t);
                    weight_bytes += b.size();
                    op_norms[i] = Some(b);
                }
                Op::MoeExperts { experts, .. } => {
                    let layer = graph
                        .weight(experts.gate[0])
                        .name
                        .split(".mlp.")
                        .next()
                        .unwrap_or("experts")
                        .to_string();
                    // The shared expert, when the dispatches compute it, is the last one.
                    let shared = fusions.shared[i];
                    let routed = experts.gate.len();
                    let ex = weights::upload_experts(
                        up,
                        &layer,
                        routed + shared.is_some() as usize,
                        &mut |e| {
                            let (gate, up, down) = match shared {
                                Some(s) if e == routed => (s.gate, s.up, s.down),
                                _ => (experts.gate[e], experts.up[e], experts.down[e]),
                            };
                            Ok(weights::Expert {
                                gate: tensor(gate)?,
                                up: tensor(up)?,
                                down: tensor(down)?,
                            })
                        },
                        weight_binding,
                        expert_parts,
                    )?;
                    weight_bytes += ex
                        .gate_up
                        .iter()
                        .chain(&ex.down)
                        .map(|b| b.size())
                        .sum::<u64>();
                    for _ in 0..3 * ex.experts {
                        tick(&mut done);
                    }
                    op_experts[i] = Some(ex);
                }
                // A routing op that computes its router product: the router widened to f32.
                Op::MoeRoute { .. } if fusions.router[i].is_some() => {
                    let r = fusions.router[i].expect("just matched");
                    for w in op.weights().into_iter().chain([r.weight]) {
                        let b = weights::upload_vector(up, &graph.weight(w).name, &tensor(w)?);
                        weight_bytes += b.size();
                        vectors[w.0] = Some(b);
                        tick(&mut done);
                    }
                }
                // Every other op's weights by their role: vectors as f32, the rest as
                // matrices (split across bindings where they must be), each uploaded once.
                _ => {
                    for w in op.weights() {
                        let desc = graph.weight(w);
                        if absorbed && desc.role != WeightRole::Vector {
                            continue;
                        }
                        if desc.role == WeightRole::Vector {
                            if vectors[w.0].is_none() {
                                let b = weights::upload_vector(up, &desc.name, &tensor(w)?);
                                weight_bytes += b.size();
                                vectors[w.0] = Some(b);
                                tick(&mut done);
                            }
                        } else if matrices[w.0].is_none() {
                            let t = tensor(w)?;
                            let m = weights::upload_matrix(
                                up,
                                &desc.name,
                                &t,
                                weight_binding,
                                max_rows_binding,
                            )?;
                            weight_bytes += m.parts.iter().map(|p| p.buffer.size()).sum::<u64>();
                            matrices[w.0] = Some(m);
                            tick(&mut done);
                        }
                    }
                }
            }
        }
        // The chunk size: every per-token buffer must fit one binding.
        let mut max_tokens = options.max_tokens.max(1);
        let per_token_bytes = |cols: usize| (cols * 4) as u64;
        for b in &graph.buffers {
            max_tokens = max_tokens.min((max_binding / per_token_bytes(b.cols).max(1)) as usize);
        }
        // No layer needs more part bindings than it has parts.
        let most_parts = op_experts.iter().flatten().map(|e| e.gate_up.len()).max();
        let expert_parts = expert_parts.min(most_parts.unwrap_or(1));
        let moe_dims = graph.ops.iter().enumerate().filter_map(|(i, op)| match op {
            Op::MoeExperts { ids, .. } => {
                let ex = op_experts[i].as_ref()?;
                // Entries a token has: its routed experts and the shared one.
                let shared = fusions.shared[i].is_some() as usize;
                Some((
                    ex.experts,
                    graph.buffer(*ids).cols + shared,
                    ex.inter,
                    ex.hidden,
                    ex.dispatches(),
                ))
            }
            _ => None,
        });
        let (mut e_max, mut k_max, mut width_max, mut dispatches_max) = (0, 0, 0, 0);
        for (e, k, inter, hidden, dispatches) in moe_dims {
            e_max = e_max.max(e);
            k_max = k_max.max(k);
            width_max = width_max.max(inter.max(hidden));
            dispatches_max = dispatches_max.max(dispatches);
        }
        if k_max > 0 {
            max_tokens =
                max_tokens.min((max_binding / per_token_bytes(k_max * width_max)) as usize);
            max_tokens = max_tokens.min((max_binding / per_token_bytes(2 * e_max)) as usize);
        }
        if max_tokens == 0 {
            return Err(Error::backend(
                "wgpu",
                "one token's activations do not fit a storage binding of this adapter",
            ));
        }

        let arena = arena::plan(&graph, max_tokens, fusions.positions());
        let bins: Vec<wgpu::Buffer> = arena
            .bin_bytes
            .iter()
            .map(|&b| storage(&device, "arena", b, wgpu::BufferUsages::COPY_SRC))
            .collect();
        let moe = (k_max > 0).then(|| {
            let slot_cap = max_tokens * k_max;
            let max_items = slot_cap / TILE_ROWS + e_max.min(slot_cap) + 1;
            MoeScratch {
                scores: storage(
                    &device,
                    "moe_scores",
                    (max_tokens * 2 * e_max * 4) as u64,
                    wgpu::BufferUsages::empty(),
                ),
                counters: storage(
                    &device,
                    "moe_counters",
                    ((4 * e_max + 1) * 4) as u64,
                    wgpu::BufferUsages::empty(),
                ),
                slots: storage(
                    &device,
                    "moe_slots",
                    (2 * slot_cap * 4) as u64,
                    wgpu::BufferUsages::empty(),
                ),
                plan: storage(
                    &device,
                    "moe_plan",
                    ((PLAN_HEAD * dispatches_max + 3 * max_items) * 4) as u64,
                    wgpu::BufferUsages::INDIRECT,
                ),
                act: storage(
                    &device,
                    "moe_act",
                    (slot_cap * width_max * 4) as u64,
                    wgpu::BufferUsages::empty(),
                ),
                y: storage(
                    &device,
                    "moe_y",
                    (slot_cap * width_max * 4) as u64,
                    wgpu::BufferUsages::empty(),
                ),
                slot_cap,
                max_dispatches: dispatches_max,
            }
        });
        // Split-KV partials for the rows of a pass.
        let parts_bytes = program::attention::split_parts_bytes(&graph, max_tokens);
        let attn_parts = (parts_bytes > 0 && parts_bytes <= max_binding).then(|| {
            storage(
                &device,
                "attn_parts",
                parts_bytes,
                wgpu::BufferUsages::empty(),
            )
        });
        // The integer kernels' quantized rows: the widest q8_0 / q4 product input of a pass
        // (a dense product's rows, an MoE layer's tokens or its slots).
        let xq = options.int8_dots.then(|| {
            let mut words = 0;
            for m in matrices.iter().flatten() {
                if program::int8::eligible(m.format, m.cols) {
                    words = words.max(max_tokens * program::int8::row_words(m.cols));
                }
            }
            let slot_cap = moe.as_ref().map_or(0, |m| m.slot_cap);
            for ex in op_experts.iter().flatten() {
                if program::int8::experts_eligible(ex) {
                    words = words.max(max_tokens * program::int8::row_words(ex.hidden));
                    words = words.max(slot_cap * program::int8::row_words(ex.inter));
                }
            }
            words as u64 * 4
        });
        // None when nothing qualifies, or the rows would not fit a binding (the f32 kernels
        // then serve every product).
        let xq = xq
            .filter(|&bytes| bytes > 0 && bytes <= max_binding)
            .map(|bytes| storage(&device, "xq", bytes, wgpu::BufferUsages::empty()));
        // The products whose input's writer quantizes it (program/int8.rs).
        let folds = match xq {
            Some(_) if options.int8_folds => program::int8::Folds::find(
                &graph,
                &fusions,
                &|i| program::takes_int8(&graph, &matrices, &op_experts, i),
                gpu.limits.max_storage_buffers_per_shader_stage as usize,
            ),
            _ => program::int8::Folds::none(nops),
        };
        let dummy = storage(&device, "dummy", 16, wgpu::BufferUsages::empty());
        let spare = [0, 1].map(|_| storage(&device, "spare", 16, wgpu::BufferUsages::empty()));

        let mut kv_width = 0;
        let mut ropes = Vec::new();
        for op in &graph.ops {
            match op {
                Op::Attention { heads, .. } => kv_width = kv_width.max(heads.kv * heads.dim),
                Op::QkNormRope { rot_dim, theta, .. } => ropes.push((*rot_dim, *theta)),
                _ => {}
            }
        }
        let mut kv = KvCache::new(
            graph.num_layers,
            kv_width,
            options.slots,
            &ropes,
            max_binding,
        );
        let mut encoder = device.create_command_encoder(&Default::default());
        kv.ensure(&device, &gpu.queue, &mut encoder, max_tokens, |_| 0)?;
        gpu.queue.submit([encoder.finish()]);

        let vocab = graph.token_rows();
        let kernels = Kernels::new(
            &device,
            &program::kernels_needed(
                &graph,
                &fusions,
                &folds,
                &matrices,
                &op_experts,
                xq.is_some(),
            ),
            options.runtime_checks,
            ModuleOptions {
                expert_parts,
                subgroups: gpu.subgroups && options.subgroups,
                int8: xq.is_some(),
            },
        );
        let params_align = gpu
            .limits
            .min_uniform_buffer_offset_alignment
            .max(gpu.limits.min_storage_buffer_offset_alignment)
            .max(64) as u64;
        let chunk_cap = 4;
        let ids_cap = max_tokens * chunk_cap;
        let ids = storage(
            &device,
            "ids",
            (ids_cap * 4) as u64,
            wgpu::BufferUsages::COPY_DST,
        );
        let (step_params, step_group) =
            Self::step_buffers(&device, &kernels, chunk_cap, pass_stride(params_align));
        let staging_rows = max_tokens;
        let staging = Self::staging_buffer(&device, staging_rows);
        let program = program::compile(&Context {
            device: &device,
            kernels: &kernels,
            graph: &graph,
            arena: &arena,
            bins: &bins,
            ids: &ids,
            matrices: &matrices,
            vectors: &vectors,
            op_experts: &op_experts,
            op_norms: &op_norms,
            dummy: &dummy,
            spare: &spare,
            kv: &kv,
            moe: moe.as_ref(),
            attn_parts: attn_parts.as_ref(),
            params_align,
            expert_parts,
            split_row_blocks,
            fusions: &fusions,
            xq: xq.as_ref(),
            folds: &folds,
        });
        Ok(WgpuBackend {
            gpu,
            graph,
            kernels,
            arena,
            bins,
            matrices,
            vectors,
            op_experts,
            op_norms,
            dummy,
            spare,
            kv,
            moe,
            attn_parts,
            expert_parts,
            split_row_blocks,
            fusions,
            xq,
            folds,
            ahead: None,
            generation: 0,
            program,
            ids,
            ids_cap,
            step_params,
            step_group,
            chunk_cap,
            params_align,
            staging,
            staging_rows,
            max_tokens,
            vocab,
            weight_bytes,
            cached: vec![0; options.slots.max(1)],
            stats: StepStats::default(),
        })
    }

    pub(crate) fn step_buffers(
        device: &wgpu::Device,
        kernels: &Kernels,
        passes: usize,
        stride: u64,
    ) -> (wgpu::Buffer, wgpu::BindGroup) {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step_params"),
            size: passes as u64 * stride,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("step"),
            layout: &kernels.step_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffer,
                    offset: 0,
                    size: wgpu::BufferSize::new(PASS_PARAMS_BYTES),
                }),
            }],
        });
        (buffer, group)
    }

    pub(crate) fn staging_buffer(device: &wgpu::Device, rows: usize) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("samples_readback"),
            size: (rows.max(1) * crate::backend::ROW_BYTES) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}

/// Most KV-cache slots a backend may be asked for (each is a region of every layer's cache and
/// an entry of the per-slot bookkeeping, allocated at load).
pub const MAX_SLOTS: usize = 4096;

/// Bytes between the parameters of consecutive passes in the step-parameter buffer.
pub(crate) fn pass_stride(align: u64) -> u64 {
    PASS_PARAMS_BYTES.next_multiple_of(align)
}

//! `WgpuBackend`: the graph compiled at load, replayed per step in one command encoder and one
//! submission; per step the host writes token ids and step parameters and reads back one
//! (token, confidence) pair per predicted row (plus logits and hidden states when a test asks).

use crate::arena::ArenaPlan;
use crate::device::Gpu;
use crate::kernels::{Kernel, Kernels, STEP_PARAMS_BYTES};
use crate::kv::KvCache;
use crate::load::storage;
use crate::program::{self, Context, Dispatch, Grid, MoeScratch, Program};
use crate::readback;
use crate::timer::Timer;
use crate::weights::{DeviceMatrix, ExpertStacks};
use unmask_core::backend::{
    Backend, Capture, KernelTime, Sampled, Step, StepOutput, StepStats, SAMPLE_WORDS,
};
use unmask_core::chunks::{self, Chunk};
use unmask_core::step_params::StepParams;

/// One dispatch as a chunk runs it.
struct Run<'a> {
    kernel: Kernel,
    op: usize,
    pipeline: &'a wgpu::ComputePipeline,
    group: &'a wgpu::BindGroup,
    size: Size,
}

#[derive(Clone, Copy)]
enum Size {
    Direct(u32, u32),
    /// Offset of the workgroup counts in the MoE plan buffer.
    Indirect(u64),
}

/// Bytes read back per predicted row (token, confidence, the three best ids).
pub(crate) const ROW_BYTES: usize = SAMPLE_WORDS * 4;
use unmask_core::graph::{Graph, Rows};
use unmask_core::{Error, Result};

/// How to open the backend.
#[derive(Debug, Clone)]
pub struct WgpuOptions {
    /// Case-insensitive part of the adapter's name; `None` reads `UNMASK_ADAPTER`, and without
    /// it the best adapter is taken (hardware before software).
    pub adapter: Option<String>,
    /// Most tokens one pass over the graph handles; longer steps are split into chunks on block
    /// boundaries. Lowered automatically when a buffer would not fit one storage binding.
    pub max_tokens: usize,
    /// Caps the bytes of one weight binding below the adapter's limit, so that tests reach the
    /// split-weight paths with small models (and a big GPU can rehearse a small one's limits).
    pub weight_binding_limit: Option<u64>,
    /// Shaders with naga's index clamps and loop counters (`UNMASK_WGPU_CHECKS=1`); off by
    /// default, where the kernels run trusted (kernels.rs).
    pub runtime_checks: bool,
    /// Caps the expert-stack bindings one expert dispatch reads below what the adapter's
    /// storage-buffer limit allows (tests reach the one-part and filler paths with it).
    pub max_expert_parts: Option<usize>,
    /// Subgroup operations where the adapter has them (the matrix-vector kernels' reduction);
    /// off: workgroup memory everywhere (`UNMASK_WGPU_SUBGROUPS=0`; tests reach that path).
    pub subgroups: bool,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            adapter: None,
            max_tokens: 128,
            weight_binding_limit: None,
            runtime_checks: std::env::var("UNMASK_WGPU_CHECKS").is_ok_and(|v| v == "1"),
            max_expert_parts: None,
            subgroups: std::env::var("UNMASK_WGPU_SUBGROUPS").map_or(true, |v| v != "0"),
        }
    }
}

pub struct WgpuBackend {
    pub(crate) gpu: Gpu,
    pub(crate) graph: Graph,
    pub(crate) kernels: Kernels,
    pub(crate) arena: ArenaPlan,
    pub(crate) bins: Vec<wgpu::Buffer>,
    pub(crate) matrices: Vec<Option<DeviceMatrix>>,
    pub(crate) vectors: Vec<Option<wgpu::Buffer>>,
    pub(crate) op_experts: Vec<Option<ExpertStacks>>,
    pub(crate) op_norms: Vec<Option<wgpu::Buffer>>,
    pub(crate) dummy: wgpu::Buffer,
    pub(crate) spare: [wgpu::Buffer; 2],
    pub(crate) kv: KvCache,
    pub(crate) moe: Option<MoeScratch>,
    /// Expert-stack bindings one expert dispatch reads (load.rs).
    pub(crate) expert_parts: usize,
    /// Ops computed inside other ops' dispatches (program/fuse.rs).
    pub(crate) fusions: crate::program::fuse::Fusions,
    /// The next step's commands, recorded while the GPU ran the last one, for a step of the
    /// same shape (`Ahead::key`); replaced after every plain step.
    pub(crate) ahead: Option<Ahead>,
    /// Bumped whenever a buffer a recorded command refers to is replaced (a recompile, a new
    /// staging buffer), so that an older recording is never submitted.
    pub(crate) generation: u64,
    pub(crate) program: Program,
    /// Token ids of a whole step (chunks read at their offset) and its capacity in tokens.
    pub(crate) ids: wgpu::Buffer,
    pub(crate) ids_cap: usize,
    /// One `StepParams` entry per chunk, at `params_align` strides.
    pub(crate) step_params: wgpu::Buffer,
    pub(crate) step_group: wgpu::BindGroup,
    pub(crate) chunk_cap: usize,
    pub(crate) params_align: u64,
    /// Samples of a step, mapped for reading; capacity in rows.
    pub(crate) staging: wgpu::Buffer,
    pub(crate) staging_rows: usize,
    pub(crate) max_tokens: usize,
    /// Rows of the embedding table: token ids must be below.
    pub(crate) vocab: usize,
    pub(crate) weight_bytes: u64,
    pub(crate) cached: usize,
    pub(crate) stats: StepStats,
}

impl WgpuBackend {
    fn recompile(&mut self) {
        self.generation += 1;
        self.program = program::compile(&Context {
            device: &self.gpu.device,
            kernels: &self.kernels,
            graph: &self.graph,
            arena: &self.arena,
            bins: &self.bins,
            ids: &self.ids,
            matrices: &self.matrices,
            vectors: &self.vectors,
            op_experts: &self.op_experts,
            op_norms: &self.op_norms,
            dummy: &self.dummy,
            spare: &self.spare,
            kv: &self.kv,
            moe: self.moe.as_ref(),
            params_align: self.params_align,
            expert_parts: self.expert_parts,
            fusions: &self.fusions,
        });
    }

    /// The most tokens one pass runs over (longer steps are chunked).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// How many storage bindings the matrix `name` was split into (`None`: not a matrix here).
    pub fn weight_bindings(&self, name: &str) -> Option<usize> {
        let i = self.graph.weights.iter().position(|w| w.name == name)?;
        self.matrices[i].as_ref().map(|m| m.parts.len())
    }

    /// Grows the per-step buffers (ids, step parameters, readback) for `tokens` and `chunks`.
    /// Returns the buffers created.
    fn ensure_step_capacity(&mut self, tokens: usize, chunks: usize, out_rows: usize) -> usize {
        let mut created = 0;
        if chunks > self.chunk_cap || tokens > self.ids_cap {
            self.chunk_cap = self.chunk_cap.max(chunks).next_power_of_two();
            self.ids_cap = self.ids_cap.max(tokens).next_power_of_two();
            let (b, g) = Self::step_buffers(
                &self.gpu.device,
                &self.kernels,
                self.chunk_cap,
                self.params_align,
            );
            self.step_params = b;
            self.step_group = g;
            self.ids = storage(
                &self.gpu.device,
                "ids",
                (self.ids_cap * 4) as u64,
                wgpu::BufferUsages::COPY_DST,
            );
            self.recompile();
            created += 3;
        }
        if out_rows > self.staging_rows {
            self.staging_rows = out_rows.next_power_of_two();
            self.staging = Self::staging_buffer(&self.gpu.device, self.staging_rows);
            self.generation += 1;
            created += 1;
        }
        created
    }

    /// Runs one step: records every chunk into one command encoder, submits it once, and reads
    /// back the samples (and captures).
    pub async fn step_async(&mut self, s: &Step<'_>) -> Result<StepOutput> {
        self.run_async(s, None).await
    }

    /// [`Self::step_async`] with every dispatch timed into `times` when given (timer.rs).
    pub async fn run_async(
        &mut self,
        s: &Step<'_>,
        times: Option<&mut Vec<KernelTime>>,
    ) -> Result<StepOutput> {
        s.check(self.cached, self.vocab)?;
        self.graph.check_routing_start(s.start)?;
        let n = s.tokens.len();
        let chunks = chunks::split(s.start, n, s.out_rows, s.block_length, self.max_tokens)?;
        let device = self.gpu.device.clone();
        let mut allocations = self.ensure_step_capacity(n, chunks.len(), s.out_rows);
        let mut uploaded = 0usize;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("step"),
        });
        let (grown, table_bytes) =
            self.kv
                .ensure(&device, &self.gpu.queue, &mut encoder, s.start + n, s.start)?;
        if grown > 0 {
            self.recompile();
            allocations += grown + 1;
            uploaded += table_bytes;
        }

        // Per-step uploads: the ids and one parameter entry per chunk.
        self.gpu
            .queue
            .write_buffer(&self.ids, 0, bytemuck::cast_slice(s.tokens));
        uploaded += n * 4;
        let p = &s.sampling;
        let align = self.params_align as usize;
        let mut params = vec![0u8; chunks.len() * align];
        for (i, c) in chunks.iter().enumerate() {
            let u = StepParams::pass(s, c.offset, c.len, c.out);
            params[i * align..i * align + STEP_PARAMS_BYTES as usize]
                .copy_from_slice(bytemuck::bytes_of(&u));
        }
        self.gpu.queue.write_buffer(&self.step_params, 0, &params);
        uploaded += params.len();

        // Captures (tests only): logits, then each hidden state, rows in step order.
        let capture = self.capture_layout(s);
        let capture_buffer = capture.as_ref().map(|c| {
            allocations += 1;
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("capture_readback"),
                size: c.total_bytes.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });

        let mut timer = match times {
            Some(_) => Some(Timer::new(
                &self.gpu,
                chunks.len() * self.program.dispatches.len(),
            )?),
            None => None,
        };
        let seeded = p.temperature > 0.0;
        // A plain step of the shape the last one recorded ahead runs those commands; the
        // encoder then holds only a growing cache's copies (none, or the shape changed).
        let key = Ahead::key(self.generation, &chunks, seeded);
        let plain = timer.is_none() && capture.is_none();
        let recorded = match self.ahead.take() {
            Some(a) if plain && grown == 0 && a.key == key => Some(a),
            _ => None,
        };
        let dispatches = match &recorded {
            Some(a) => a.dispatches,
            None => self.record_chunks(
                &mut encoder,
                &chunks,
                seeded,
                timer.as_mut(),
                capture.as_ref().zip(capture_buffer.as_ref()),
            )?,
        };
        if let Some(t) = &timer {
            t.resolve(&mut encoder);
        }
        let recorded_ahead = recorded.is_some();
        match recorded {
            Some(a) => self.gpu.queue.submit([a.commands]),
            None => self.gpu.queue.submit([encoder.finish()]),
        };
        // While the GPU runs: the same shape's commands for the next step (the decoder's next
        // window usually has it; they do not depend on the ids or the positions, which are
        // uploaded per step).
        if plain {
            let mut next = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step (recorded ahead)"),
            });
            let dispatches = self.record_chunks(&mut next, &chunks, seeded, None, None)?;
            self.ahead = Some(Ahead {
                key,
                commands: next.finish(),
                dispatches,
            });
        }

        let sample_bytes = if self.has(self.graph.samples) {
            s.out_rows * SAMPLE_WORDS * 4
        } else {
            0
        };
        let words = readback::read(&self.gpu, &self.staging, sample_bytes as u64).await?;
        let samples = Sampled::from_words(&words);
        let mut out = StepOutput {
            samples,
            ..Default::default()
        };
        let mut read_back = sample_bytes;
        if let (Some(cap), Some(buf)) = (capture, capture_buffer) {
            let words = readback::read(&self.gpu, &buf, cap.total_bytes).await?;
            read_back += words.len() * 4;
            let all: &[f32] = bytemuck::cast_slice(&words);
            let mut sections = cap.sections.iter().map(|(b, base)| {
                let d = self.graph.buffer(*b);
                let rows = match d.rows {
                    Rows::Tokens => n,
                    Rows::Out => s.out_rows,
                };
                let start = *base as usize / 4;
                all[start..start + rows * d.cols].to_vec()
            });
            if self.has(self.graph.logits) {
                out.logits = sections.next();
            }
            out.hidden = sections.collect();
        }
        if let (Some(t), Some(times)) = (timer, times) {
            times.extend(t.read(&self.gpu).await?);
        }
        if let Some(e) = self.gpu.take_error() {
            return Err(Error::backend("wgpu", e));
        }
        self.cached = s.start + s.keep;
        self.stats = StepStats {
            dispatches,
            submissions: 1,
            bytes_uploaded: uploaded,
            bytes_read_back: read_back,
            allocations,
            recorded_ahead,
        };
        Ok(out)
    }

    /// Records every chunk's dispatches into `encoder` (a pass each, or a pass per dispatch
    /// with its timestamps when timed), the samples' copies to the staging buffer and the
    /// captures' copies; returns the dispatches recorded.
    fn record_chunks(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        chunks: &[Chunk],
        seeded: bool,
        mut timer: Option<&mut Timer>,
        capture: Option<(&CaptureLayout, &wgpu::Buffer)>,
    ) -> Result<usize> {
        let align = self.params_align as usize;
        let mut dispatches = 0;
        let mut out_done = 0usize;
        let mut rows_done = 0usize;
        for (ci, c) in chunks.iter().enumerate() {
            let offset = (ci * align) as u32;
            let runs = self
                .program
                .dispatches
                .iter()
                .filter_map(|d| self.resolve(d, c, seeded));
            match timer.as_deref_mut() {
                // One pass per dispatch, its beginning and end timestamped.
                Some(t) => {
                    for r in runs {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(r.kernel.entry()),
                            timestamp_writes: Some(t.next(r.op, r.kernel.entry())?),
                        });
                        self.encode(&mut pass, &r, offset);
                        dispatches += 1;
                    }
                }
                None => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("chunk"),
                        timestamp_writes: None,
                    });
                    for r in runs {
                        self.encode(&mut pass, &r, offset);
                        dispatches += 1;
                    }
                }
            }
            if c.out > 0 && self.has(self.graph.samples) {
                let samples = self.buffer_of(self.graph.samples);
                encoder.copy_buffer_to_buffer(
                    samples,
                    0,
                    &self.staging,
                    (out_done * ROW_BYTES) as u64,
                    (c.out * ROW_BYTES) as u64,
                );
            }
            if let Some((cap, buf)) = capture {
                for (b, base) in &cap.sections {
                    let d = self.graph.buffer(*b);
                    let (rows, before) = match d.rows {
                        Rows::Tokens => (c.len, rows_done),
                        Rows::Out => (c.out, out_done),
                    };
                    if rows > 0 {
                        encoder.copy_buffer_to_buffer(
                            self.buffer_of(*b),
                            0,
                            buf,
                            base + (before * d.cols * 4) as u64,
                            (rows * d.cols * 4) as u64,
                        );
                    }
                }
            }
            out_done += c.out;
            rows_done += c.len;
        }
        Ok(dispatches)
    }

    /// What `d` runs in chunk `c` (the seeded sampler, a matrix-vector kernel), or `None` when it
    /// has nothing to do there (the head in a chunk that predicts nothing, an empty grid).
    fn resolve<'a>(&'a self, d: &'a Dispatch, c: &Chunk, seeded: bool) -> Option<Run<'a>> {
        if d.needs_out && c.out == 0 {
            return None;
        }
        let (mut kernel, mut pipeline, mut group, mut grid) = match (&d.seeded, seeded) {
            (Some((pl, bg)), true) => (Kernel::SampleSeeded, pl, bg, d.grid),
            _ => (d.kernel, &d.pipeline, &d.bind_group, d.grid),
        };
        if let Some((rows, variants)) = &d.small {
            let n = rows.resolve(c.len, c.out) as usize;
            if let Some(v) = variants.iter().find(|v| n <= v.max_rows) {
                (kernel, pipeline, group, grid) = (v.kernel, &v.pipeline, &v.bind_group, v.grid);
            }
        }
        let size = match grid {
            Grid::Direct(x, y) => {
                let (x, y) = (x.resolve(c.len, c.out), y.resolve(c.len, c.out));
                if x == 0 || y == 0 {
                    return None;
                }
                Size::Direct(x, y)
            }
            Grid::Indirect(offset) => Size::Indirect(offset),
        };
        Some(Run {
            kernel,
            op: d.op,
            pipeline,
            group,
            size,
        })
    }

    /// Records one resolved dispatch into `pass`, with the chunk's step parameters at `offset`.
    fn encode(&self, pass: &mut wgpu::ComputePass, r: &Run, offset: u32) {
        pass.set_pipeline(r.pipeline);
        pass.set_bind_group(0, r.group, &[]);
        pass.set_bind_group(1, &self.step_group, &[offset]);
        match r.size {
            Size::Direct(x, y) => pass.dispatch_workgroups(x, y, 1),
            Size::Indirect(at) => {
                let plan = &self.moe.as_ref().expect("MoE scratch").plan;
                pass.dispatch_workgroups_indirect(plan, at);
            }
        }
    }

    /// Whether a graph buffer is computed (a graph for tests may have no sampler, say).
    fn has(&self, b: unmask_core::graph::BufId) -> bool {
        self.arena.bin_of[b.0].is_some()
    }

    fn buffer_of(&self, b: unmask_core::graph::BufId) -> &wgpu::Buffer {
        &self.bins[self.arena.bin_of[b.0].expect("arena buffer")]
    }

    /// Where each captured buffer lands in the capture readback: logits, then the hidden states.
    fn capture_layout(&self, s: &Step) -> Option<CaptureLayout> {
        let mut bufs = vec![self.graph.logits];
        match s.capture {
            Capture::Samples => return None,
            Capture::Logits => {}
            Capture::Hidden => bufs.extend(self.graph.hidden.iter().copied()),
        }
        let mut sections = Vec::new();
        let mut total = 0u64;
        for b in bufs.into_iter().filter(|&b| self.has(b)) {
            let d = self.graph.buffer(b);
            let rows = match d.rows {
                Rows::Tokens => s.tokens.len(),
                Rows::Out => s.out_rows,
            };
            sections.push((b, total));
            total += (rows * d.cols * 4) as u64;
        }
        Some(CaptureLayout {
            sections,
            total_bytes: total,
        })
    }

    /// Bytes of device memory held: weights, activations, KV cache and scratch.
    pub fn memory_bytes(&self) -> u64 {
        let moe = self.moe.as_ref().map_or(0, |m| {
            [&m.scores, &m.counters, &m.slots, &m.plan, &m.act, &m.y]
                .iter()
                .map(|b| b.size())
                .sum()
        });
        self.weight_bytes + self.arena.total_bytes() + self.kv.bytes() + moe
    }

    /// Device-to-device copy bandwidth (bytes read + written per second).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let size = (256u64 << 20).min(self.gpu.limits.max_buffer_size) & !3;
        let make = |usage| {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bandwidth"),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = make(wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        let dst = make(wgpu::BufferUsages::COPY_DST);
        let run = |times: usize| -> Result<f64> {
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            for _ in 0..times {
                enc.copy_buffer_to_buffer(&src, 0, &dst, 0, size);
            }
            let t = std::time::Instant::now();
            self.gpu.queue.submit([enc.finish()]);
            self.gpu.wait()?;
            Ok(t.elapsed().as_secs_f64())
        };
        run(1)?;
        let times = 4;
        let secs = run(times)?;
        Ok((2 * size * times as u64) as f64 / secs.max(1e-9))
    }
}

/// Commands recorded ahead for the next step, and the shape they are for.
pub(crate) struct Ahead {
    key: AheadKey,
    commands: wgpu::CommandBuffer,
    dispatches: usize,
}

/// What recorded commands depend on: the buffers' generation, each chunk's (tokens, predicted
/// rows), and whether the seeded sampler runs.
#[derive(PartialEq, Eq)]
struct AheadKey {
    generation: u64,
    chunks: Vec<(usize, usize)>,
    seeded: bool,
}

impl Ahead {
    fn key(generation: u64, chunks: &[Chunk], seeded: bool) -> AheadKey {
        AheadKey {
            generation,
            chunks: chunks.iter().map(|c| (c.len, c.out)).collect(),
            seeded,
        }
    }
}

struct CaptureLayout {
    /// (buffer, byte offset of its section).
    sections: Vec<(unmask_core::graph::BufId, u64)>,
    total_bytes: u64,
}

impl Backend for WgpuBackend {
    fn supports(&self, op: &unmask_core::graph::Op) -> std::result::Result<(), String> {
        crate::load::supports(&self.graph, op)
    }

    fn name(&self) -> String {
        self.gpu.describe()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn step(&mut self, step: &Step) -> Result<StepOutput> {
        pollster::block_on(self.step_async(step))
    }

    /// The browser cannot block on the device: use [`WgpuBackend::step_async`] there.
    #[cfg(target_arch = "wasm32")]
    fn step(&mut self, _step: &Step) -> Result<StepOutput> {
        Err(Error::backend(
            "wgpu",
            "the browser cannot wait for the GPU synchronously; call step_async",
        ))
    }

    fn cached(&self) -> usize {
        self.cached
    }

    fn reset(&mut self) {
        self.cached = 0;
    }

    fn last_stats(&self) -> StepStats {
        self.stats.clone()
    }

    fn device_memory(&self) -> Option<u64> {
        Some(self.memory_bytes())
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn measure_bandwidth(&mut self) -> Option<Result<f64>> {
        Some(self.copy_bandwidth())
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn profile_step(&mut self, s: &Step) -> Option<Result<(StepOutput, Vec<KernelTime>)>> {
        if !self.gpu.timestamps {
            return None;
        }
        let mut times = Vec::new();
        let out = pollster::block_on(self.run_async(s, Some(&mut times)));
        for t in &mut times {
            t.fused = self.fusions.absorbed_into(t.op);
        }
        Some(out.map(|out| (out, times)))
    }
}

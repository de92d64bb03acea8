//! `WgpuBackend`: the graph compiled at load, replayed per step in one command encoder and one
//! submission; per step the host writes token ids and pass parameters and reads back one
//! (token, confidence) pair per predicted row (plus logits and hidden states when a test asks).
//! A batch of several sequences' steps is laid out in passes (`unmask_core::passes`): their
//! windows share each pass's weight reads, each row reading its own sequence's positions, KV
//! slot and sampling parameters from the pass's sequence table (step.wgsl).

use crate::arena::ArenaPlan;
use crate::device::Gpu;
use crate::kernels::{Kernel, Kernels};
use crate::kv::KvCache;
use crate::load::{pass_stride, storage};
use crate::program::{self, Context, Dispatch, Grid, MoeScratch, PassShape, Program};
use crate::readback;
use crate::shaders::MATVECS;
use crate::timer::Timer;
use crate::weights::{DeviceMatrix, ExpertStacks};
use unmask_core::backend::{
    check_batch, Backend, Capture, KernelTime, Sampled, SlotStep, Step, StepOutput, StepStats,
    SAMPLE_WORDS,
};
use unmask_core::chunks::Chunk;
use unmask_core::passes;
use unmask_core::step_params::{
    SeqParams, StepParams, BYTES as STEP_PARAMS_BYTES, MAX_PASS_SEQS, SEQ_BYTES,
};

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
    /// KV-cache slots: sequences stepped together in one batched forward
    /// (`Backend::step_batch`) or kept for a later request to reuse. At least 1.
    pub slots: usize,
    /// Whether split-KV (long contexts) reads each K/V tile once for a block of a sequence's
    /// rows, as the row-block attention does, rather than once per row. `None`: yes on a
    /// hardware adapter, no on a software one, whose loops stop early (llvmpipe ends a shader
    /// invocation's loops after 65535 iterations in all: a key range costs more iterations
    /// for a block of rows, and with LLaDA2.0-mini's heads an op case over 6000 positions went
    /// wrong from row 5564 on lavapipe with blocks, not with single rows). A row's result is
    /// the same bits either way. `UNMASK_WGPU_SPLIT_ROW_BLOCKS=0|1` sets it.
    pub split_row_blocks: Option<bool>,
    /// q8_0 / q4 products over windows (the matrix-vector kernels, dense and experts) take
    /// integer dot products against activations quantized to 8 bits per block of 32
    /// (`dot4I8Packed`; the cpu backend's `--int8-dots`): not bit for bit the f32 result, so
    /// off by default. `UNMASK_WGPU_INT8_DOTS=1` sets it.
    pub int8_dots: bool,
    /// With `int8_dots`: the kernel that writes a product's input (a norm, attention, the MoE
    /// combine) also quantizes it, instead of a dispatch of its own before the product (the
    /// same bits; three dispatches fewer per MoE layer). Off only to compare both
    /// (`UNMASK_WGPU_INT8_FOLDS=0`).
    pub int8_folds: bool,
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
            slots: 1,
            split_row_blocks: std::env::var("UNMASK_WGPU_SPLIT_ROW_BLOCKS")
                .ok()
                .map(|v| v != "0"),
            int8_dots: std::env::var("UNMASK_WGPU_INT8_DOTS").is_ok_and(|v| v == "1"),
            int8_folds: std::env::var("UNMASK_WGPU_INT8_FOLDS").map_or(true, |v| v != "0"),
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
    /// Split-KV partials (program/attention.rs), where they fit a binding.
    pub(crate) attn_parts: Option<wgpu::Buffer>,
    /// Expert-stack bindings one expert dispatch reads (load.rs).
    pub(crate) expert_parts: usize,
    /// `WgpuOptions::split_row_blocks`, resolved for the adapter.
    pub(crate) split_row_blocks: bool,
    /// Quantized activation rows of the integer kernels (`WgpuOptions::int8_dots`, where
    /// they fit a binding; program/int8.rs).
    pub(crate) xq: Option<wgpu::Buffer>,
    /// The products whose input's writer quantizes it (program/int8.rs).
    pub(crate) folds: program::int8::Folds,
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
    /// One pass's parameters (`StepParams` and its sequences) per pass, at `pass_stride`.
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
    /// Positions cached in each KV-cache slot (`WgpuOptions::slots` of them).
    pub(crate) cached: Vec<usize>,
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
            attn_parts: self.attn_parts.as_ref(),
            params_align: self.params_align,
            expert_parts: self.expert_parts,
            split_row_blocks: self.split_row_blocks,
            fusions: &self.fusions,
            xq: self.xq.as_ref(),
            folds: &self.folds,
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

    /// Grows the per-step buffers (ids, pass parameters, readback) for `tokens` and `passes`.
    /// Returns the buffers created.
    fn ensure_step_capacity(&mut self, tokens: usize, passes: usize, out_rows: usize) -> usize {
        let mut created = 0;
        if passes > self.chunk_cap || tokens > self.ids_cap {
            self.chunk_cap = self.chunk_cap.max(passes).next_power_of_two();
            self.ids_cap = self.ids_cap.max(tokens).next_power_of_two();
            let (b, g) = Self::step_buffers(
                &self.gpu.device,
                &self.kernels,
                self.chunk_cap,
                pass_stride(self.params_align),
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

    /// Runs one step: records every pass into one command encoder, submits it once, and reads
    /// back the samples (and captures).
    pub async fn step_async(&mut self, s: &Step<'_>) -> Result<StepOutput> {
        let mut out = self.run_async(&[slot0(s)], None).await?;
        Ok(out.remove(0))
    }

    /// The steps of several sequences as one forward (`Backend::step_batch`), for the browser.
    pub async fn step_batch_async(&mut self, steps: &[SlotStep<'_>]) -> Result<Vec<StepOutput>> {
        self.run_async(steps, None).await
    }

    /// Which chunks may share a pass: those whose rows, and whose predicted rows, take the same
    /// matrix kernel (a matrix-vector kernel by how many rows it holds, or the tiles).
    fn class(c: &Chunk) -> usize {
        let tier = |n: usize| {
            MATVECS
                .iter()
                .position(|&(_, rows, _)| n <= rows)
                .unwrap_or(MATVECS.len())
        };
        tier(c.len) * (MATVECS.len() + 1) + tier(c.out)
    }

    /// [`Self::step_batch_async`] with every dispatch timed into `times` when given (timer.rs).
    pub async fn run_async(
        &mut self,
        steps: &[SlotStep<'_>],
        times: Option<&mut Vec<KernelTime>>,
    ) -> Result<Vec<StepOutput>> {
        let cached = &self.cached;
        check_batch(steps, cached.len(), |s| cached[s], self.vocab)?;
        for s in steps {
            self.graph.check_routing_start(s.step.start)?;
        }
        if steps.len() > 1 && steps.iter().any(|s| s.step.capture != Capture::Samples) {
            return Err(Error::Invalid(
                "logits and hidden states are captured from a step of one sequence, not a batch"
                    .into(),
            ));
        }
        let refs: Vec<&Step> = steps.iter().map(|s| &s.step).collect();
        let passes = passes::plan(&refs, self.max_tokens, MAX_PASS_SEQS, Self::class)?;
        let n: usize = refs.iter().map(|s| s.tokens.len()).sum();
        let out_total: usize = refs.iter().map(|s| s.out_rows).sum();
        let device = self.gpu.device.clone();
        let mut allocations = self.ensure_step_capacity(n, passes.len(), out_total);
        let mut uploaded = 0usize;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("step"),
        });
        let needed = refs
            .iter()
            .map(|s| s.start + s.tokens.len())
            .max()
            .unwrap_or(0);
        // Every slot keeps what it caches, a stepping one its positions before the step.
        let cached = &self.cached;
        let keep = |slot| {
            steps
                .iter()
                .find(|s| s.slot == slot)
                .map_or(cached[slot], |s| s.step.start)
        };
        let (grown, table_bytes) =
            self.kv
                .ensure(&device, &self.gpu.queue, &mut encoder, needed, keep)?;
        if grown > 0 {
            self.recompile();
            allocations += grown + 1;
            uploaded += table_bytes;
        }

        // Per-step uploads: the ids in pass order, and each pass's parameters and sequences.
        let stride = pass_stride(self.params_align) as usize;
        let mut ids = Vec::with_capacity(n);
        let mut params = vec![0u8; passes.len() * stride];
        let mut shapes = Vec::with_capacity(passes.len());
        for (i, pass) in passes.iter().enumerate() {
            let at = i * stride;
            let first = &pass.seqs[0];
            let mut head =
                StepParams::pass(refs[first.step], first.chunk.offset, pass.rows, pass.out);
            head.ids_offset = ids.len() as u32;
            head.seqs = pass.seqs.len() as u32;
            params[at..at + STEP_PARAMS_BYTES].copy_from_slice(bytemuck::bytes_of(&head));
            for (j, q) in pass.seqs.iter().enumerate() {
                let s = refs[q.step];
                let c = q.chunk;
                ids.extend_from_slice(&s.tokens[c.offset..c.offset + c.len]);
                let kv_base = self.kv.base(steps[q.step].slot);
                let seq = SeqParams::of(s, &c, q.row0, q.out0, kv_base);
                let o = at + STEP_PARAMS_BYTES + j * SEQ_BYTES;
                params[o..o + SEQ_BYTES].copy_from_slice(bytemuck::bytes_of(&seq));
            }
            shapes.push(PassShape {
                rows: pass.rows,
                out: pass.out,
                seqs: pass.seqs.len(),
                widest: pass.widest(),
                seeded: pass
                    .seqs
                    .iter()
                    .any(|q| refs[q.step].sampling.temperature > 0.0),
                long_kv: pass.seqs.iter().any(|q| {
                    refs[q.step].start + q.chunk.offset + q.chunk.len
                        > crate::program::attention::SPLIT_KEYS
                }),
            });
        }
        self.gpu
            .queue
            .write_buffer(&self.ids, 0, bytemuck::cast_slice(&ids));
        uploaded += n * 4;
        self.gpu.queue.write_buffer(&self.step_params, 0, &params);
        uploaded += params.len();

        // Captures (tests only, one sequence): logits, then each hidden state, rows in order.
        let capture = self.capture_layout(refs[0]);
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
                passes.len() * self.program.dispatches.len(),
            )?),
            None => None,
        };
        // A plain step of the shape the last one recorded ahead runs those commands; the
        // encoder then holds only a growing cache's copies (none, or the shape changed).
        let key = AheadKey {
            generation: self.generation,
            passes: shapes,
        };
        let plain = timer.is_none() && capture.is_none();
        let recorded = match self.ahead.take() {
            Some(a) if plain && grown == 0 && a.key == key => Some(a),
            _ => None,
        };
        let dispatches = match &recorded {
            Some(a) => a.dispatches,
            None => self.record_passes(
                &mut encoder,
                &key.passes,
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
        // window usually has it; they do not depend on the ids, the positions or the slots,
        // which are uploaded per step).
        if plain {
            let mut next = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step (recorded ahead)"),
            });
            let dispatches = self.record_passes(&mut next, &key.passes, None, None)?;
            self.ahead = Some(Ahead {
                key,
                commands: next.finish(),
                dispatches,
            });
        }

        let sample_bytes = if self.has(self.graph.samples) {
            out_total * SAMPLE_WORDS * 4
        } else {
            0
        };
        let words = readback::read(&self.gpu, &self.staging, sample_bytes as u64).await?;
        let rows = Sampled::from_words(&words);
        // The staging buffer holds the passes' predicted rows in pass order: each step's are
        // gathered back, chunk after chunk.
        let mut outs: Vec<StepOutput> = vec![StepOutput::default(); steps.len()];
        let mut at = 0;
        for pass in &passes {
            for q in &pass.seqs {
                let r = &rows
                    [(at + q.out0).min(rows.len())..(at + q.out0 + q.chunk.out).min(rows.len())];
                outs[q.step].samples.extend_from_slice(r);
            }
            at += pass.out;
        }
        let mut read_back = sample_bytes;
        if let (Some(cap), Some(buf)) = (capture, capture_buffer) {
            let s = refs[0];
            let words = readback::read(&self.gpu, &buf, cap.total_bytes).await?;
            read_back += words.len() * 4;
            let all: &[f32] = bytemuck::cast_slice(&words);
            let mut sections = cap.sections.iter().map(|(b, base)| {
                let d = self.graph.buffer(*b);
                let rows = match d.rows {
                    Rows::Tokens => s.tokens.len(),
                    Rows::Out => s.out_rows,
                };
                let start = *base as usize / 4;
                all[start..start + rows * d.cols].to_vec()
            });
            if self.has(self.graph.logits) {
                outs[0].logits = sections.next();
            }
            outs[0].hidden = sections.collect();
        }
        if let (Some(t), Some(times)) = (timer, times) {
            times.extend(t.read(&self.gpu).await?);
        }
        if let Some(e) = self.gpu.take_error() {
            return Err(Error::backend("wgpu", e));
        }
        for s in steps {
            self.cached[s.slot] = s.step.start + s.step.keep;
        }
        self.stats = StepStats {
            dispatches,
            submissions: 1,
            bytes_uploaded: uploaded,
            bytes_read_back: read_back,
            allocations,
            recorded_ahead,
        };
        Ok(outs)
    }

    /// Records every pass's dispatches into `encoder` (a compute pass each, or one per
    /// dispatch with its timestamps when timed), the samples' copies to the staging buffer and
    /// the captures' copies; returns the dispatches recorded.
    fn record_passes(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        passes: &[PassShape],
        mut timer: Option<&mut Timer>,
        capture: Option<(&CaptureLayout, &wgpu::Buffer)>,
    ) -> Result<usize> {
        let stride = pass_stride(self.params_align) as usize;
        let mut dispatches = 0;
        let mut out_done = 0usize;
        let mut rows_done = 0usize;
        for (pi, c) in passes.iter().enumerate() {
            let offset = (pi * stride) as u32;
            let runs = self
                .program
                .dispatches
                .iter()
                .filter_map(|d| self.resolve(d, c));
            match timer.as_deref_mut() {
                // One compute pass per dispatch, its beginning and end timestamped.
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
                        label: Some("pass"),
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
            // A captured step is one sequence: its passes' rows are its rows in order.
            if let Some((cap, buf)) = capture {
                for (b, base) in &cap.sections {
                    let d = self.graph.buffer(*b);
                    let (rows, before) = match d.rows {
                        Rows::Tokens => (c.rows, rows_done),
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
            rows_done += c.rows;
        }
        Ok(dispatches)
    }

    /// What `d` runs in a pass of shape `c` (the seeded sampler, a matrix-vector kernel), or
    /// `None` when it has nothing to do there (the head in a pass that predicts nothing, an
    /// empty grid).
    fn resolve<'a>(&'a self, d: &'a Dispatch, c: &PassShape) -> Option<Run<'a>> {
        if d.needs_out && c.out == 0 {
            return None;
        }
        let (mut kernel, mut pipeline, mut group, mut grid) = match (&d.seeded, c.seeded) {
            (Some((pl, bg)), true) => (Kernel::SampleSeeded, pl, bg, d.grid),
            _ => (d.kernel, &d.pipeline, &d.bind_group, d.grid),
        };
        // The kernel a product takes is chosen by the rows of its widest sequence, so that a
        // sequence's rows take the same kernel in any batch (passes::plan groups by it);
        // split-KV by whether the pass is long.
        if let Some((choice, variants)) = &d.small {
            if let Some(v) = choice.pick(c, variants, |v| v.max_rows) {
                (kernel, pipeline, group, grid) = (v.kernel, &v.pipeline, &v.bind_group, v.grid);
            }
        }
        let size = match grid {
            Grid::Direct(x, y) => {
                let (x, y) = (x.resolve(c), y.resolve(c));
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

    /// Records one resolved dispatch into `pass`, with the pass parameters at `offset`.
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
        let parts = self.attn_parts.as_ref().map_or(0, |b| b.size());
        self.weight_bytes + self.arena.total_bytes() + self.kv.bytes() + moe + parts
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

/// What recorded commands depend on: the buffers' generation and each pass's shape.
#[derive(PartialEq, Eq)]
struct AheadKey {
    generation: u64,
    passes: Vec<PassShape>,
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
        self.cached[0]
    }

    fn reset(&mut self) {
        self.cached[0] = 0;
    }

    fn slots(&self) -> usize {
        self.cached.len()
    }

    fn cached_in(&self, slot: usize) -> usize {
        self.cached.get(slot).copied().unwrap_or(0)
    }

    fn reset_slot(&mut self, slot: usize) {
        if let Some(c) = self.cached.get_mut(slot) {
            *c = 0;
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn step_batch(&mut self, steps: &[SlotStep]) -> Result<Vec<StepOutput>> {
        pollster::block_on(self.run_async(steps, None))
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
        let out = pollster::block_on(self.run_async(&[slot0(s)], Some(&mut times)))
            .map(|mut o| o.remove(0));
        for t in &mut times {
            t.fused = self.fusions.absorbed_into(t.op);
        }
        Some(out.map(|out| (out, times)))
    }
}

/// `s` as the one step of a batch, in slot 0.
fn slot0<'a>(s: &Step<'a>) -> SlotStep<'a> {
    SlotStep {
        slot: 0,
        step: s.clone(),
    }
}

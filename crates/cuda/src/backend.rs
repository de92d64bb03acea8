//! `CudaBackend`: the `Backend` trait on one NVIDIA GPU.
//!
//! At load: the kernels are compiled (or taken from the disk cache), weights uploaded (or made
//! on the device), the activation arena planned (plan.rs) and allocated with slot 0's KV cache
//! and the MoE scratch; the other KV-cache slots get memory when first stepped. A batch of steps
//! (one per slot; `step` is a batch of one in slot 0) becomes passes of at most `max_tokens`
//! rows and `MAX_PASS_SEQS` sequences (core's passes.rs: each step cut into whole-block chunks
//! as alone). Each pass uploads its token ids and every sequence's 64-byte parameter words,
//! runs its shape (record/: which slots, tokens and predicted rows) directly the first time and
//! as a CUDA graph once the shape comes back (shapes.rs), and each sequence that predicts reads
//! back `SAMPLE_WORDS` words per output row (token, confidence, the three best ids). Growing
//! past the planned token count or a slot's cache length reallocates (counted in
//! `StepStats::allocations`) and re-records.

use crate::availability::cuda_error;
use crate::device::{Device, DeviceMem, Launch};
use crate::params;
use crate::plan;
use crate::record::{self, Bindings, MoeScratch, SeqRows};
use crate::shapes::{Run, Shape, Shapes};
use crate::weights::{DeviceWeights, RandomFormat, Source};
use cudarc::driver::CudaGraph;
use std::time::Instant;
use unmask_core::backend::{
    check_batch, Backend, Capture, KernelTime, Sampled, SlotStep, Step, StepOutput, StepStats,
    SAMPLE_WORDS,
};
use unmask_core::graph::{BufId, Graph, Op, Rows};
use unmask_core::passes::{self, Pass, Placed};
use unmask_core::step_params::{StepParams, MAX_PASS_SEQS};
use unmask_core::weights::WeightStore;
use unmask_core::{Error, Result};

#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// Longest sequence the KV cache may grow to (the model's max_position_embeddings).
    pub max_positions: usize,
    /// Replay captured CUDA graphs (`UNMASK_CUDA_GRAPHS=0` launches every kernel instead, to
    /// tell a capture problem from a kernel problem).
    pub graphs: bool,
    /// Window tokens the arena is first planned for; larger steps grow it up to `max_tokens`.
    pub initial_tokens: usize,
    /// Most tokens one pass runs over: longer steps (prompts) run in chunks of whole blocks, as
    /// on wgpu, so the arena stays small and the chunks' shapes repeat (and replay graphs); the
    /// windows of a batch share passes up to this many rows.
    pub max_tokens: usize,
    /// KV-cache slots: sequences stepped together in one `step_batch` or kept for a later
    /// request (at least 1, at most [`MAX_SLOTS`]). A slot's cache is allocated when it is
    /// first stepped and kept (with its recorded passes) when it is reset.
    pub slots: usize,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            max_positions: 32_768,
            graphs: std::env::var("UNMASK_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            initial_tokens: 64,
            max_tokens: 128,
            slots: 1,
        }
    }
}

/// Most KV-cache slots a backend holds (each is a list of per-layer caches).
pub const MAX_SLOTS: usize = 4096;
/// Positions a slot other than 0 gets at first, at least (then doubling as it grows).
const FIRST_SLOT_POSITIONS: usize = 256;

/// One KV-cache slot: per layer K and V, `[cap, kv_heads * head_dim]` f32, and the positions
/// it holds.
#[derive(Default)]
struct Slot {
    kv: Vec<(DeviceMem, DeviceMem)>,
    cap: usize,
    cached: usize,
}

impl Slot {
    fn pointers(&self) -> Vec<(u64, u64)> {
        self.kv.iter().map(|(k, v)| (k.ptr(), v.ptr())).collect()
    }
}

/// Pass shapes whose recordings are kept; the least recently used goes first.
const MAX_SHAPES: usize = 64;
/// Cache positions allocated at first (doubling up to `max_positions` as sequences grow).
const INITIAL_POSITIONS: usize = 4096;

pub struct CudaBackend {
    dev: Device,
    graph: Graph,
    weights: DeviceWeights,
    opts: CudaOptions,
    life: Vec<Option<(usize, usize)>>,
    /// Activation arena, planned for `cap_tokens` window rows.
    arena: DeviceMem,
    buffers: Vec<u64>,
    cap_tokens: usize,
    moe_mem: Vec<DeviceMem>,
    moe: MoeScratch,
    slots: Vec<Slot>,
    /// Per layer: floats per cached position (kv heads * head dim).
    kv_width: Vec<usize>,
    /// `MAX_PASS_SEQS` sequences' parameter words, `P_WORDS` each.
    params: DeviceMem,
    _inv_freq_mem: Vec<DeviceMem>,
    inv_freq: Vec<u64>,
    steps: Shapes<Shape, CudaGraph>,
    /// Token ids must be below this (the graph's, computed once).
    token_rows: usize,
    last_tokens: usize,
    last_chunks: usize,
    stats: StepStats,
}

impl CudaBackend {
    /// The graph with weights from `store` (shapes checked against the graph).
    pub fn new(
        graph: Graph,
        store: &WeightStore,
        opts: CudaOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        Self::build(graph, &Source::Host(store), opts, progress)
    }

    /// The graph with random weights made on the device (benchmarks of published shapes).
    pub fn with_random_weights(
        graph: Graph,
        random: RandomFormat,
        opts: CudaOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        Self::build(graph, &Source::Random(random), opts, progress)
    }

    fn build(
        graph: Graph,
        src: &Source,
        opts: CudaOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        record::check_limits(&graph)?;
        if opts.slots == 0 || opts.slots > MAX_SLOTS {
            return Err(Error::Invalid(format!(
                "{} KV-cache slots asked of the cuda backend; it holds 1 to {MAX_SLOTS}",
                opts.slots
            )));
        }
        let dev = Device::open(opts.device)?;
        // The CPU emulator runs launches one by one: it captures no CUDA graphs.
        let opts = CudaOptions {
            graphs: opts.graphs && !dev.emulated(),
            ..opts
        };
        let weights = DeviceWeights::upload(&dev, &graph, src, progress)?;
        let mut inv_freq = vec![0u64; graph.ops.len()];
        let mut inv_mem = Vec::new();
        for (i, op) in graph.ops.iter().enumerate() {
            if let Op::QkNormRope { rot_dim, theta, .. } = op {
                let f = unmask_core::reference::ops::rope_inv_freq(*rot_dim, *theta);
                let m = dev.alloc(f.len() * 4)?;
                dev.upload(m.ptr(), &f)?;
                inv_freq[i] = m.ptr();
                inv_mem.push(m);
            }
        }
        let mut kv_width = vec![0usize; graph.num_layers];
        for op in &graph.ops {
            if let Op::Attention { layer, heads, .. } = op {
                kv_width[*layer] = heads.kv * heads.dim;
            }
        }
        let params = dev.alloc(MAX_PASS_SEQS * params::P_WORDS * 4)?;
        let life = plan::lifetimes(&graph);
        let placeholder = dev.alloc(1)?;
        let mut b = CudaBackend {
            arena: placeholder,
            buffers: vec![0; graph.buffers.len()],
            cap_tokens: 0,
            moe_mem: Vec::new(),
            moe: MoeScratch {
                offsets: 0,
                active: 0,
                num_active: 0,
                pairs: 0,
                act: 0,
                ys: 0,
            },
            slots: (0..opts.slots).map(|_| Slot::default()).collect(),
            kv_width,
            params,
            _inv_freq_mem: inv_mem,
            inv_freq,
            steps: Shapes::new(MAX_SHAPES),
            token_rows: graph.token_rows(),
            last_tokens: 0,
            last_chunks: 0,
            stats: StepStats::default(),
            life,
            weights,
            opts,
            dev,
            graph,
        };
        b.grow_tokens(b.opts.initial_tokens.max(1))?;
        b.grow_slot(0, INITIAL_POSITIONS.min(b.opts.max_positions).max(1), 0)?;
        b.dev.sync()?;
        Ok(b)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Where this backend's kernels came from (compiled now, or the disk cache).
    pub fn kernel_origin(&self) -> &crate::kernels::Origin {
        self.dev.origin()
    }

    /// Plans and allocates the arena and MoE scratch for `tokens` window rows.
    fn grow_tokens(&mut self, tokens: usize) -> Result<usize> {
        let g = &self.graph;
        let sizes: Vec<usize> = (0..g.buffers.len())
            .map(|i| g.buffer_bytes(BufId(i), tokens, tokens))
            .collect();
        let (offsets, total) = plan::assign(&sizes, &self.life);
        let arena = self.dev.alloc(total)?;
        self.buffers = offsets.iter().map(|&o| arena.ptr() + o as u64).collect();
        self.arena = arena;
        // MoE scratch for the widest MoE layer.
        let (mut experts, mut top_k, mut inter, mut hidden) = (1, 1, 1, 1);
        for (oi, op) in g.ops.iter().enumerate() {
            if let Op::MoeExperts { ids, .. } = op {
                let st = self.weights.stacks.get(&oi).ok_or_else(|| {
                    cuda_error(format!("op {oi}: MoE experts were not uploaded as a stack"))
                })?;
                experts = experts.max(st.count);
                top_k = top_k.max(g.buffer(*ids).cols);
                inter = inter.max(st.inter);
                hidden = hidden.max(st.hidden);
            }
        }
        let pairs = tokens * top_k;
        let mems = [
            self.dev.alloc((experts + 1) * 4)?,
            self.dev.alloc(experts * 4)?,
            self.dev.alloc(4)?,
            self.dev.alloc(pairs * 4)?,
            self.dev.alloc(pairs * inter * 4)?,
            self.dev.alloc(pairs * hidden * 4)?,
        ];
        self.moe = MoeScratch {
            offsets: mems[0].ptr(),
            active: mems[1].ptr(),
            num_active: mems[2].ptr(),
            pairs: mems[3].ptr(),
            act: mems[4].ptr(),
            ys: mems[5].ptr(),
        };
        let allocations = 1 + mems.len();
        self.moe_mem = mems.into();
        self.cap_tokens = tokens;
        self.steps.clear();
        Ok(allocations)
    }

    /// Grows every layer's K/V cache of `slot` to `positions`, keeping its first `keep`.
    fn grow_slot(&mut self, slot: usize, positions: usize, keep: usize) -> Result<usize> {
        let mut fresh = Vec::with_capacity(self.kv_width.len());
        let old = &self.slots[slot];
        for (l, &w) in self.kv_width.iter().enumerate() {
            let k = self.dev.alloc(positions * w * 4)?;
            let v = self.dev.alloc(positions * w * 4)?;
            if let Some((ok, ov)) = old.kv.get(l) {
                let bytes = keep.min(old.cap) * w * 4;
                if bytes > 0 {
                    self.dev.copy(k.ptr(), ok.ptr(), bytes)?;
                    self.dev.copy(v.ptr(), ov.ptr(), bytes)?;
                }
            }
            fresh.push((k, v));
        }
        self.dev.sync()?;
        let s = &mut self.slots[slot];
        s.kv = fresh;
        s.cap = positions;
        self.steps.clear();
        Ok(2 * self.kv_width.len())
    }

    fn bindings(&self) -> Bindings<'_> {
        Bindings {
            graph: &self.graph,
            weights: &self.weights,
            buffers: &self.buffers,
            inv_freq: &self.inv_freq,
            moe: self.moe,
        }
    }

    /// Records the launches of a pass shape (once: they stay valid until buffers move).
    fn prepare(&mut self, shape: &Shape, pass: &Pass) -> Result<()> {
        if self.steps.contains(shape) {
            return Ok(());
        }
        let kv: Vec<Vec<(u64, u64)>> = shape
            .iter()
            .map(|&(slot, _, _)| self.slots[slot].pointers())
            .collect();
        let seqs: Vec<SeqRows> = pass
            .seqs
            .iter()
            .enumerate()
            .map(|(j, q)| SeqRows {
                row0: q.row0,
                rows: q.chunk.len,
                out0: q.out0,
                out: q.chunk.out,
                params: self.params.ptr() + (j * params::P_WORDS * 4) as u64,
                kv: &kv[j],
            })
            .collect();
        let launches = record::record(&self.bindings(), &seqs)?;
        self.steps.insert(shape.clone(), launches);
        Ok(())
    }

    /// Runs one pass of a recorded shape: launched, captured then replayed, or replayed
    /// (shapes.rs decides). Returns (kernels, submissions).
    fn run(&mut self, shape: &Shape) -> Result<(usize, usize)> {
        let graphs = self.opts.graphs;
        let (how, rec) = self
            .steps
            .run(shape, graphs)
            .ok_or_else(|| cuda_error("a step shape ran before it was recorded"))?;
        let kernels = rec.launches.len();
        if how == Run::Capture {
            rec.graph = Some(capture(&self.dev, &rec.launches)?);
        }
        match (&rec.graph, how) {
            (Some(g), Run::Capture | Run::Replay) => {
                g.launch()
                    .map_err(|e| cuda_error(format!("replaying a step: {e}")))?;
                Ok((kernels, 1))
            }
            _ => {
                for l in &rec.launches {
                    self.dev.launch(l)?;
                }
                Ok((kernels, kernels))
            }
        }
    }

    /// The address of buffer `b`'s rows of the sequence placed at `q` in its pass, and how
    /// many rows it has there (its tokens, or its predicted rows).
    fn seq_rows(&self, b: BufId, q: &Placed) -> (u64, usize) {
        let cols = self.graph.buffer(b).cols;
        let (first, count) = match self.graph.buffer(b).rows {
            Rows::Tokens => (q.row0, q.chunk.len),
            Rows::Out => (q.out0, q.chunk.out),
        };
        (self.buffers[b.0] + (first * cols * 4) as u64, count)
    }

    /// Appends buffer `b`'s rows of the sequence placed at `q` to `into`; returns the bytes.
    fn read_f32(&self, b: BufId, q: &Placed, into: &mut Vec<f32>) -> Result<usize> {
        let (at_ptr, rows) = self.seq_rows(b, q);
        let at = into.len();
        into.resize(at + rows * self.graph.buffer(b).cols, 0.0);
        self.dev.download(at_ptr, &mut into[at..])?;
        Ok((into.len() - at) * 4)
    }
}

/// A step's outputs assembled pass by pass: the sampled rows (and captured logits) of its
/// chunks that predict, every chunk's hidden rows when hidden states are captured.
struct Gathered {
    capture: Capture,
    out_rows: usize,
    words: Vec<u32>,
    logits: Vec<f32>,
    hidden: Vec<Vec<f32>>,
    read_back: usize,
}

impl Gathered {
    fn new(s: &Step) -> Self {
        Gathered {
            capture: s.capture,
            out_rows: s.out_rows,
            words: Vec::with_capacity(SAMPLE_WORDS * s.out_rows),
            logits: Vec::new(),
            hidden: Vec::new(),
            read_back: 0,
        }
    }

    /// Reads the rows of the step's chunk placed at `q` of the pass that just ran.
    fn read(&mut self, b: &CudaBackend, q: &Placed) -> Result<()> {
        let g = &b.graph;
        if q.chunk.out > 0 {
            let (ptr, rows) = b.seq_rows(g.samples, q);
            let at = self.words.len();
            self.words.resize(at + SAMPLE_WORDS * rows, 0);
            b.dev.download(ptr, &mut self.words[at..])?;
            self.read_back += SAMPLE_WORDS * rows * 4;
            if self.capture != Capture::Samples {
                self.read_back += b.read_f32(g.logits, q, &mut self.logits)?;
            }
        }
        if self.capture == Capture::Hidden {
            self.hidden.resize(g.hidden.len(), Vec::new());
            for (i, &h) in g.hidden.iter().enumerate() {
                self.read_back += b.read_f32(h, q, &mut self.hidden[i])?;
            }
        }
        Ok(())
    }

    fn finish(self) -> (StepOutput, usize) {
        debug_assert_eq!(self.words.len(), SAMPLE_WORDS * self.out_rows);
        let out = StepOutput {
            samples: Sampled::from_words(&self.words),
            logits: (self.capture != Capture::Samples).then_some(self.logits),
            hidden: self.hidden,
        };
        (out, self.read_back)
    }
}

impl Backend for CudaBackend {
    fn supports(&self, op: &unmask_core::graph::Op) -> std::result::Result<(), String> {
        crate::record::supports(&self.graph, op)
    }

    fn name(&self) -> String {
        let i = &self.dev.info;
        let t = &self.dev.toolchain;
        if self.dev.emulated() {
            return format!("cuda ({}, UNMASK_CUDA_EMULATOR)", i.name);
        }
        format!(
            "cuda ({}, sm_{}{}, driver CUDA {}.{}, NVRTC {}.{})",
            i.name,
            i.compute_capability.0,
            i.compute_capability.1,
            t.driver.0,
            t.driver.1,
            t.nvrtc.0,
            t.nvrtc.1
        )
    }

    fn cached(&self) -> usize {
        self.slots[0].cached
    }

    fn reset(&mut self) {
        self.slots[0].cached = 0;
    }

    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn cached_in(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |s| s.cached)
    }

    /// Forgets the slot's positions; its memory stays for the next sequence (freeing it would
    /// drop the recorded passes of every slot, whose pointers the allocator may reuse).
    fn reset_slot(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.cached = 0;
        }
    }

    fn last_stats(&self) -> StepStats {
        self.stats.clone()
    }

    fn step(&mut self, s: &Step) -> Result<StepOutput> {
        Ok(self.execute(&[slot0(s)], None)?.remove(0))
    }

    fn step_batch(&mut self, steps: &[SlotStep]) -> Result<Vec<StepOutput>> {
        self.execute(steps, None)
    }

    fn profile_step(&mut self, s: &Step) -> Option<Result<(StepOutput, Vec<KernelTime>)>> {
        let mut times = Vec::new();
        Some(
            self.execute(&[slot0(s)], Some(&mut times))
                .map(|mut out| (out.remove(0), times)),
        )
    }

    fn last_routing(&self) -> Option<Vec<Vec<u32>>> {
        // The routing ids stay in the arena to the end of a step (plan.rs); reading them is a
        // transfer made only on request, outside any timed step. A step of several passes kept
        // only its last pass's.
        if self.last_chunks != 1 {
            return None;
        }
        let n = self.last_tokens;
        let mut lists = Vec::new();
        for op in &self.graph.ops {
            if let Op::MoeRoute { ids, .. } = op {
                let mut v = vec![0u32; n * self.graph.buffer(*ids).cols];
                self.dev.download(self.buffers[ids.0], &mut v).ok()?;
                lists.push(v);
            }
        }
        Some(lists)
    }

    fn device_memory(&self) -> Option<u64> {
        let kv: usize = self
            .slots
            .iter()
            .flat_map(|s| &s.kv)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        let moe: usize = self.moe_mem.iter().map(|m| m.len()).sum();
        Some((self.weights.bytes + self.arena.len() + kv + moe) as u64)
    }

    fn measure_bandwidth(&mut self) -> Option<Result<f64>> {
        Some(self.copy_bandwidth())
    }
}

impl CudaBackend {
    /// A batch of steps as passes; each kernel timed with CUDA events into `times` when given
    /// (the passes then launch kernel by kernel, no graph).
    fn execute(
        &mut self,
        steps: &[SlotStep],
        mut times: Option<&mut Vec<KernelTime>>,
    ) -> Result<Vec<StepOutput>> {
        let slots = &self.slots;
        check_batch(steps, slots.len(), |s| slots[s].cached, self.token_rows)?;
        for s in steps {
            // Block routing reads routing block b as rows b * size.. of the step.
            self.graph.check_routing_start(s.step.start)?;
            let end = s.step.start + s.step.tokens.len();
            if end > self.opts.max_positions {
                return Err(Error::Invalid(format!(
                    "a step ending at position {end} is beyond the {} positions this backend \
                     was opened for",
                    self.opts.max_positions
                )));
            }
        }
        if steps.len() > 1 && steps.iter().any(|s| s.step.capture != Capture::Samples) {
            return Err(Error::Invalid(
                "logits and hidden states are captured from a step of one sequence, not a batch"
                    .into(),
            ));
        }
        self.dev.bind()?;
        let refs: Vec<&Step> = steps.iter().map(|s| &s.step).collect();
        // Every kernel computes a row the same way in any pass, so any chunks may share one.
        let passes = passes::plan(&refs, self.opts.max_tokens, MAX_PASS_SEQS, |_| 0)?;
        let widest = passes.iter().map(|p| p.rows).max().unwrap_or(0);
        let mut allocations = 0;
        if widest > self.cap_tokens {
            let want = widest
                .max(2 * self.cap_tokens)
                .min(self.opts.max_tokens.max(widest));
            allocations += self.grow_tokens(want)?;
        }
        for s in steps {
            let end = s.step.start + s.step.tokens.len();
            let cap = self.slots[s.slot].cap;
            if end > cap {
                let want = end
                    .max(2 * cap)
                    .max(FIRST_SLOT_POSITIONS)
                    .min(self.opts.max_positions);
                allocations += self.grow_slot(s.slot, want, s.step.start)?;
            }
        }
        let mut outputs: Vec<Gathered> = refs.iter().map(|s| Gathered::new(s)).collect();
        let (mut dispatches, mut submissions, mut uploaded) = (0, 0, 0);
        for pass in &passes {
            let shape: Shape = pass
                .seqs
                .iter()
                .map(|q| (steps[q.step].slot, q.chunk.len, q.chunk.out))
                .collect();
            self.prepare(&shape, pass)?;
            let mut ids = Vec::with_capacity(pass.rows);
            let mut words = Vec::with_capacity(pass.seqs.len() * params::P_WORDS);
            for q in &pass.seqs {
                let (s, c) = (refs[q.step], q.chunk);
                ids.extend_from_slice(&s.tokens[c.offset..c.offset + c.len]);
                words.extend_from_slice(&StepParams::pass(s, c.offset, c.len, c.out).words());
            }
            self.dev
                .upload(self.buffers[self.graph.input_ids.0], &ids)?;
            self.dev.upload(self.params.ptr(), &words)?;
            uploaded += ids.len() * 4 + words.len() * 4;
            let (k, sub) = match times.as_deref_mut() {
                Some(times) => self.run_timed(&shape, times)?,
                None => self.run(&shape)?,
            };
            dispatches += k;
            submissions += sub;
            for q in &pass.seqs {
                outputs[q.step].read(self, q)?;
            }
        }
        for s in steps {
            self.slots[s.slot].cached = s.step.start + s.step.keep;
        }
        self.last_tokens = passes.last().map_or(0, |p| p.rows);
        self.last_chunks = passes.len();
        let mut read_back = 0;
        let results = outputs
            .into_iter()
            .map(|g| {
                let (out, bytes) = g.finish();
                read_back += bytes;
                out
            })
            .collect();
        self.stats = StepStats {
            dispatches,
            submissions,
            bytes_uploaded: uploaded,
            bytes_read_back: read_back,
            allocations,
            recorded_ahead: false,
        };
        Ok(results)
    }

    /// Runs a recorded shape kernel by kernel, each between two CUDA events.
    fn run_timed(&mut self, shape: &Shape, times: &mut Vec<KernelTime>) -> Result<(usize, usize)> {
        let (_, rec) = self
            .steps
            .run(shape, false)
            .ok_or_else(|| cuda_error("a step shape ran before it was recorded"))?;
        let seconds = self.dev.launch_timed(&rec.launches)?;
        for (l, t) in rec.launches.iter().zip(seconds) {
            times.push(KernelTime {
                op: l.op,
                fused: Vec::new(),
                kernel: l.kernel.clone(),
                seconds: t,
            });
        }
        Ok((rec.launches.len(), rec.launches.len()))
    }
}

impl CudaBackend {
    /// Bytes read plus written per second by device-to-device copies of 512 MiB (or a quarter of
    /// the free memory, if less).
    fn copy_bandwidth(&mut self) -> Result<f64> {
        let (free, _) = self.dev.memory()?;
        let size = (512usize << 20).min(free / 4) & !255;
        if size < (16 << 20) {
            return Err(cuda_error(
                "too little free device memory to measure bandwidth",
            ));
        }
        let a = self.dev.alloc(size)?;
        let b = self.dev.alloc(size)?;
        self.dev.copy(b.ptr(), a.ptr(), size)?;
        self.dev.sync()?;
        let iters = 20;
        let t = Instant::now();
        for i in 0..iters {
            let (src, dst) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            self.dev.copy(dst.ptr(), src.ptr(), size)?;
        }
        self.dev.sync()?;
        let secs = t.elapsed().as_secs_f64();
        Ok(2.0 * size as f64 * iters as f64 / secs)
    }
}

/// `s` as the one step of a batch, in slot 0.
fn slot0<'a>(s: &Step<'a>) -> SlotStep<'a> {
    SlotStep {
        slot: 0,
        step: s.clone(),
    }
}

/// Captures `launches` on the device's stream into an instantiated graph (run by the caller).
fn capture(dev: &Device, launches: &[Launch]) -> Result<CudaGraph> {
    dev.bind()?;
    dev.begin_capture()?;
    let mut failed = None;
    for l in launches {
        if let Err(e) = dev.launch(l) {
            failed = Some(e);
            break;
        }
    }
    let captured = dev.end_capture();
    if let Some(e) = failed {
        return Err(e);
    }
    captured?.ok_or_else(|| cuda_error("capturing a step gave an empty graph"))
}

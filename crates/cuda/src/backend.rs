//! `CudaBackend`: the `Backend` trait on one NVIDIA GPU.
//!
//! At load: the kernels are compiled (or taken from the disk cache), weights uploaded (or made
//! on the device), the activation arena planned (plan.rs) and allocated with the KV cache and
//! the MoE scratch. A step is split into chunks of at most `max_tokens` (whole blocks; core's
//! chunks.rs, as on wgpu); each chunk uploads its token ids and the 48-byte parameter words,
//! runs its shape (token count, output rows) directly the first time and as a CUDA graph once
//! the shape comes back (shapes.rs), and the chunks that predict read back `SAMPLE_WORDS` words
//! per output row (token, confidence, the three best ids). Growing past the planned token count
//! or cache length reallocates (counted in `StepStats::allocations`) and re-records.

use crate::availability::cuda_error;
use crate::device::{Device, DeviceMem, Launch};
use crate::params;
use crate::plan;
use crate::record::{self, Bindings, MoeScratch};
use crate::shapes::{Run, Shapes};
use crate::weights::{DeviceWeights, RandomFormat, Source};
use cudarc::driver::CudaGraph;
use std::time::Instant;
use unmask_core::backend::{
    Backend, Capture, KernelTime, Sampled, Step, StepOutput, StepStats, SAMPLE_WORDS,
};
use unmask_core::chunks::{self, Chunk};
use unmask_core::graph::{BufId, Graph, Op, Rows};
use unmask_core::step_params::StepParams;
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
    /// on wgpu, so the arena stays small and the chunks' shapes repeat (and replay graphs).
    pub max_tokens: usize,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            max_positions: 32_768,
            graphs: std::env::var("UNMASK_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            initial_tokens: 64,
            max_tokens: 128,
        }
    }
}

/// Step shapes whose recordings are kept; the least recently used goes first.
const MAX_SHAPES: usize = 16;
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
    /// Per layer K and V, `[kv_cap, kv_heads * head_dim]` f32.
    kv_mem: Vec<(DeviceMem, DeviceMem)>,
    kv_width: Vec<usize>,
    kv_cap: usize,
    params: DeviceMem,
    _inv_freq_mem: Vec<DeviceMem>,
    inv_freq: Vec<u64>,
    steps: Shapes<CudaGraph>,
    cached: usize,
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
        let dev = Device::open(opts.device)?;
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
        let params = dev.alloc(params::P_WORDS * 4)?;
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
            kv_mem: Vec::new(),
            kv_width,
            kv_cap: 0,
            params,
            _inv_freq_mem: inv_mem,
            inv_freq,
            steps: Shapes::new(MAX_SHAPES),
            cached: 0,
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
        b.grow_positions(INITIAL_POSITIONS.min(b.opts.max_positions).max(1))?;
        b.dev.sync()?;
        Ok(b)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Where this backend's kernels came from (compiled now, or the disk cache).
    pub fn kernel_origin(&self) -> &crate::kernels::Origin {
        &self.dev.kernels.origin
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

    /// Grows every layer's K/V cache to `positions`, keeping the cached ones.
    fn grow_positions(&mut self, positions: usize) -> Result<usize> {
        let mut fresh = Vec::with_capacity(self.kv_width.len());
        for (l, &w) in self.kv_width.iter().enumerate() {
            let k = self.dev.alloc(positions * w * 4)?;
            let v = self.dev.alloc(positions * w * 4)?;
            if let Some((ok, ov)) = self.kv_mem.get(l) {
                let bytes = self.cached.min(self.kv_cap) * w * 4;
                if bytes > 0 {
                    self.dev.copy(k.ptr(), ok.ptr(), bytes)?;
                    self.dev.copy(v.ptr(), ov.ptr(), bytes)?;
                }
            }
            fresh.push((k, v));
        }
        self.dev.sync()?;
        self.kv_mem = fresh;
        self.kv_cap = positions;
        self.steps.clear();
        Ok(2 * self.kv_width.len())
    }

    fn bindings(&self) -> Bindings<'_> {
        Bindings {
            graph: &self.graph,
            weights: &self.weights,
            buffers: &self.buffers,
            params: self.params.ptr(),
            kv: &[],
            inv_freq: &self.inv_freq,
            moe: self.moe,
        }
    }

    /// Records the launches of a step shape (once: they stay valid until buffers move).
    fn prepare(&mut self, n: usize, out: usize) -> Result<()> {
        if self.steps.contains((n, out)) {
            return Ok(());
        }
        let kv: Vec<(u64, u64)> = self
            .kv_mem
            .iter()
            .map(|(k, v)| (k.ptr(), v.ptr()))
            .collect();
        let launches = {
            let mut b = self.bindings();
            b.kv = &kv;
            record::record(&b, n, out)?
        };
        self.steps.insert((n, out), launches);
        Ok(())
    }

    /// Runs one pass of a recorded shape: launched, captured then replayed, or replayed
    /// (shapes.rs decides). Returns (kernels, submissions).
    fn run(&mut self, n: usize, out: usize) -> Result<(usize, usize)> {
        let graphs = self.opts.graphs;
        let (how, rec) = self
            .steps
            .run((n, out), graphs)
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

    fn rows(&self, b: BufId, n: usize, out: usize) -> usize {
        match self.graph.buffer(b).rows {
            Rows::Tokens => n,
            Rows::Out => out,
        }
    }

    /// Appends buffer `b`'s rows of a chunk of `n` tokens predicting `out` to `into`.
    fn read_f32(&self, b: BufId, n: usize, out: usize, into: &mut Vec<f32>) -> Result<usize> {
        let at = into.len();
        into.resize(at + self.rows(b, n, out) * self.graph.buffer(b).cols, 0.0);
        self.dev.download(self.buffers[b.0], &mut into[at..])?;
        Ok((into.len() - at) * 4)
    }
}

/// A step's outputs assembled chunk by chunk: the sampled rows (and captured logits) of the
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

    fn read(&mut self, b: &CudaBackend, c: &Chunk) -> Result<()> {
        let g = &b.graph;
        if c.out > 0 {
            let at = self.words.len();
            self.words.resize(at + SAMPLE_WORDS * c.out, 0);
            b.dev
                .download(b.buffers[g.samples.0], &mut self.words[at..])?;
            self.read_back += SAMPLE_WORDS * c.out * 4;
            if self.capture != Capture::Samples {
                self.read_back += b.read_f32(g.logits, c.len, c.out, &mut self.logits)?;
            }
        }
        if self.capture == Capture::Hidden {
            self.hidden.resize(g.hidden.len(), Vec::new());
            for (i, &h) in g.hidden.iter().enumerate() {
                self.read_back += b.read_f32(h, c.len, c.out, &mut self.hidden[i])?;
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
        self.cached
    }

    fn reset(&mut self) {
        self.cached = 0;
    }

    fn last_stats(&self) -> StepStats {
        self.stats.clone()
    }

    fn step(&mut self, s: &Step) -> Result<StepOutput> {
        self.execute(s, None)
    }

    fn profile_step(&mut self, s: &Step) -> Option<Result<(StepOutput, Vec<KernelTime>)>> {
        let mut times = Vec::new();
        Some(self.execute(s, Some(&mut times)).map(|out| (out, times)))
    }

    fn last_routing(&self) -> Option<Vec<Vec<u32>>> {
        // The routing ids stay in the arena to the end of a step (plan.rs); reading them is a
        // transfer made only on request, outside any timed step. A chunked step kept only its
        // last chunk's.
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
        let kv: usize = self.kv_mem.iter().map(|(k, v)| k.len() + v.len()).sum();
        let moe: usize = self.moe_mem.iter().map(|m| m.len()).sum();
        Some((self.weights.bytes + self.arena.len() + kv + moe) as u64)
    }

    fn measure_bandwidth(&mut self) -> Option<Result<f64>> {
        Some(self.copy_bandwidth())
    }
}

impl CudaBackend {
    /// One step in chunks; each kernel timed with CUDA events into `times` when given (the
    /// chunks then launch kernel by kernel, no graph).
    fn execute(&mut self, s: &Step, mut times: Option<&mut Vec<KernelTime>>) -> Result<StepOutput> {
        s.check(self.cached, self.token_rows)?;
        // Block routing reads routing block b as rows b * size.. of the step.
        self.graph.check_routing_start(s.start)?;
        let n = s.tokens.len();
        let end = s.start + n;
        if end > self.opts.max_positions {
            return Err(Error::Invalid(format!(
                "a step ending at position {end} is beyond the {} positions this backend was \
                 opened for",
                self.opts.max_positions
            )));
        }
        self.dev.bind()?;
        let chunks = chunks::split(s.start, n, s.out_rows, s.block_length, self.opts.max_tokens)?;
        let widest = chunks.iter().map(|c| c.len).max().unwrap_or(0);
        let mut allocations = 0;
        if widest > self.cap_tokens {
            let want = widest
                .max(2 * self.cap_tokens)
                .min(self.opts.max_tokens.max(widest));
            allocations += self.grow_tokens(want)?;
        }
        if end > self.kv_cap {
            let want = end.max(2 * self.kv_cap).min(self.opts.max_positions);
            allocations += self.grow_positions(want)?;
        }
        let mut out_rows = Gathered::new(s);
        let (mut dispatches, mut submissions, mut uploaded) = (0, 0, 0);
        for c in &chunks {
            self.prepare(c.len, c.out)?;
            let words = StepParams::pass(s, c.offset, c.len, c.out).words();
            let ids = &s.tokens[c.offset..c.offset + c.len];
            self.dev.upload(self.buffers[self.graph.input_ids.0], ids)?;
            self.dev.upload(self.params.ptr(), &words)?;
            uploaded += ids.len() * 4 + words.len() * 4;
            let (k, sub) = match times.as_deref_mut() {
                Some(times) => self.run_timed(c.len, c.out, times)?,
                None => self.run(c.len, c.out)?,
            };
            dispatches += k;
            submissions += sub;
            out_rows.read(self, c)?;
        }
        self.cached = s.start + s.keep;
        self.last_tokens = chunks.last().map_or(0, |c| c.len);
        self.last_chunks = chunks.len();
        let (result, read_back) = out_rows.finish();
        self.stats = StepStats {
            dispatches,
            submissions,
            bytes_uploaded: uploaded,
            bytes_read_back: read_back,
            allocations,
            recorded_ahead: false,
        };
        Ok(result)
    }

    /// Runs a recorded shape kernel by kernel, each between two CUDA events.
    fn run_timed(
        &mut self,
        n: usize,
        out: usize,
        times: &mut Vec<KernelTime>,
    ) -> Result<(usize, usize)> {
        let (_, rec) = self
            .steps
            .run((n, out), false)
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

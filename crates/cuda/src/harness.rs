//! Kernels on host data, for op-level tests against the reference (`tests/ops.rs`): a small graph
//! (usually one op) is recorded exactly as the backend records it, its input buffers are written,
//! it runs once, and every buffer comes back.

use crate::device::{Device, DeviceMem};
use crate::params;
use crate::plan;
use crate::record::{self, Bindings, MoeScratch};
use crate::weights::{DeviceWeights, Source};
use std::collections::HashMap;
use unmask_core::graph::{BufId, Graph, Op};
use unmask_core::weights::WeightStore;
use unmask_core::{Result, Step};

pub struct OpHarness {
    dev: Device,
}

/// Contents of a layer's K/V cache before the step: `start` positions of `kv_heads * head_dim`.
pub struct KvPrefix {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// What [`OpHarness::run`] returns: every buffer's words, and each layer's (K, V) cache.
pub type RunOutput = (HashMap<BufId, Vec<u32>>, Vec<(Vec<f32>, Vec<f32>)>);

impl OpHarness {
    pub fn open() -> Result<Self> {
        Ok(OpHarness {
            dev: Device::open(0)?,
        })
    }

    /// Runs `graph` once for `step` (its tokens go to `graph.input_ids`, its scalars to the
    /// params buffer) after writing `inputs` (raw 32-bit words). Returns every buffer's words and
    /// the K/V caches per layer (`[positions, width]` f32, up to `step.start + n`).
    pub fn run(
        &self,
        graph: &Graph,
        store: &WeightStore,
        inputs: &[(BufId, Vec<u32>)],
        kv_prefix: &[KvPrefix],
        step: &Step,
    ) -> Result<RunOutput> {
        record::check_limits(graph)?;
        graph.check_routing_start(step.start)?;
        let dev = &self.dev;
        dev.bind()?;
        let (n, out) = (step.tokens.len(), step.out_rows);
        let end = step.start + n;
        let weights = DeviceWeights::upload(dev, graph, &Source::Host(store), &mut |_, _| {})?;
        let mut mems: Vec<DeviceMem> = Vec::new();
        let mut buffers = vec![0u64; graph.buffers.len()];
        for (i, b) in buffers.iter_mut().enumerate() {
            let m = dev.alloc(plan::buffer_bytes(graph, BufId(i), n, out))?;
            *b = m.ptr();
            mems.push(m);
        }
        let mut widths = vec![0usize; graph.num_layers];
        let mut inv_freq = vec![0u64; graph.ops.len()];
        let (mut experts, mut top_k, mut inter, mut hidden) = (1, 1, 1, 1);
        for (oi, op) in graph.ops.iter().enumerate() {
            match op {
                Op::Attention { layer, heads, .. } => widths[*layer] = heads.kv * heads.dim,
                Op::QkNormRope { rot_dim, theta, .. } => {
                    let f = unmask_core::reference::ops::rope_inv_freq(*rot_dim, *theta);
                    let m = dev.alloc(f.len() * 4)?;
                    dev.upload(m.ptr(), &f)?;
                    inv_freq[oi] = m.ptr();
                    mems.push(m);
                }
                Op::MoeExperts { ids, .. } => {
                    let st = weights.stacks[&oi];
                    experts = experts.max(st.count);
                    top_k = top_k.max(graph.buffer(*ids).cols);
                    inter = inter.max(st.inter);
                    hidden = hidden.max(st.hidden);
                }
                _ => {}
            }
        }
        let mut kv = Vec::new();
        for (l, &w) in widths.iter().enumerate() {
            let k = dev.alloc(end * w * 4)?;
            let v = dev.alloc(end * w * 4)?;
            if let Some(p) = kv_prefix.get(l) {
                dev.upload(k.ptr(), &p.k)?;
                dev.upload(v.ptr(), &p.v)?;
            }
            kv.push((k.ptr(), v.ptr()));
            mems.push(k);
            mems.push(v);
        }
        let pairs = n * top_k;
        let mut scratch = |bytes: usize| -> Result<u64> {
            let m = dev.alloc(bytes)?;
            let p = m.ptr();
            mems.push(m);
            Ok(p)
        };
        let moe = MoeScratch {
            offsets: scratch((experts + 1) * 4)?,
            active: scratch(experts * 4)?,
            num_active: scratch(4)?,
            pairs: scratch(pairs * 4)?,
            act: scratch(pairs * inter * 4)?,
            ys: scratch(pairs * hidden * 4)?,
        };
        let params_mem = dev.alloc(params::P_WORDS * 4)?;
        dev.upload(params_mem.ptr(), &params::words(step))?;
        dev.upload(buffers[graph.input_ids.0], step.tokens)?;
        for (b, words) in inputs {
            dev.upload(buffers[b.0], words)?;
        }
        let launches = record::record(
            &Bindings {
                graph,
                weights: &weights,
                buffers: &buffers,
                params: params_mem.ptr(),
                kv: &kv,
                inv_freq: &inv_freq,
                moe,
            },
            n,
            out,
        )?;
        for l in &launches {
            dev.launch(l)?;
        }
        dev.sync()?;
        let mut result = HashMap::new();
        for (i, &p) in buffers.iter().enumerate() {
            let mut v = vec![0u32; plan::buffer_bytes(graph, BufId(i), n, out) / 4];
            dev.download(p, &mut v)?;
            result.insert(BufId(i), v);
        }
        let mut caches = Vec::new();
        for (l, &(k, v)) in kv.iter().enumerate() {
            let mut hk = vec![0f32; end * widths[l]];
            let mut hv = vec![0f32; end * widths[l]];
            dev.download(k, &mut hk)?;
            dev.download(v, &mut hv)?;
            caches.push((hk, hv));
        }
        Ok((result, caches))
    }
}

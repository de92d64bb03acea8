//! The KV cache on the device, one K and one V buffer per layer holding every slot's positions
//! (`[slots * capacity, kv_heads * dim]` f32: slot s at positions `s * capacity ..`), and the
//! RoPE cos/sin tables that cover one slot's positions. Both grow only when a longer sequence
//! needs them: new buffers, every slot's cached positions copied over on the device, inside the
//! step's own command encoder.

use unmask_core::reference::ops::rope_inv_freq;
use unmask_core::{Error, Result};

/// Positions are allocated in multiples of this (and at least this many).
const GRANULE: usize = 256;

pub struct KvCache {
    layers: usize,
    /// f32 values per position per layer (kv heads * head dim).
    width: usize,
    /// Positions per slot, and the slots (fixed when the cache is made).
    pub capacity: usize,
    slots: usize,
    /// Most positions (all slots together) a single binding allows.
    max_positions: usize,
    pub k: Vec<wgpu::Buffer>,
    pub v: Vec<wgpu::Buffer>,
    /// One table per distinct (rotary dims, theta) of the graph: `[capacity, rot/2]` (cos, sin).
    pub tables: Vec<RopeTable>,
}

pub struct RopeTable {
    pub rot_dim: usize,
    pub theta: f32,
    inv_freq: Vec<f32>,
    pub buffer: Option<wgpu::Buffer>,
}

impl RopeTable {
    /// cos/sin of `pos * inv_freq[j]` for positions `0..positions`, computed exactly as the
    /// reference does (f32 angle, Rust's `sin_cos`).
    fn values(&self, positions: usize) -> Vec<f32> {
        let half = self.inv_freq.len();
        let mut out = Vec::with_capacity(positions * half * 2);
        for p in 0..positions {
            for &f in &self.inv_freq {
                let (s, c) = (p as f32 * f).sin_cos();
                out.push(c);
                out.push(s);
            }
        }
        out
    }
}

impl KvCache {
    /// The cache of `slots` sequences (at least 1); it holds no position until `ensure`.
    pub fn new(
        layers: usize,
        width: usize,
        slots: usize,
        ropes: &[(usize, f32)],
        max_binding: u64,
    ) -> Self {
        let mut tables: Vec<RopeTable> = Vec::new();
        for &(rot_dim, theta) in ropes {
            if !tables
                .iter()
                .any(|t| t.rot_dim == rot_dim && t.theta.to_bits() == theta.to_bits())
            {
                tables.push(RopeTable {
                    rot_dim,
                    theta,
                    inv_freq: rope_inv_freq(rot_dim, theta),
                    buffer: None,
                });
            }
        }
        let widest = tables
            .iter()
            .map(|t| t.rot_dim.max(1))
            .max()
            .unwrap_or(1)
            .max(width);
        KvCache {
            layers,
            width,
            capacity: 0,
            slots: slots.max(1),
            max_positions: (max_binding as usize / (widest * 4)).max(1),
            k: Vec::new(),
            v: Vec::new(),
            tables,
        }
    }

    pub fn table_index(&self, rot_dim: usize, theta: f32) -> usize {
        self.tables
            .iter()
            .position(|t| t.rot_dim == rot_dim && t.theta.to_bits() == theta.to_bits())
            .expect("every rope of the graph has a table")
    }

    pub fn bytes(&self) -> u64 {
        let kv = 2 * self.layers * self.slots * self.capacity * self.width * 4;
        let tables: usize = self
            .tables
            .iter()
            .map(|t| self.capacity * t.rot_dim * 4)
            .sum();
        (kv + tables) as u64
    }

    /// Where `slot` starts in a layer's cache, in positions.
    pub fn base(&self, slot: usize) -> usize {
        slot * self.capacity
    }

    /// Makes room for `needed` positions in every slot, keeping the first `keep(s)` cached
    /// positions of each slot s. Returns the number of buffers created and the bytes uploaded
    /// (0, 0 when nothing had to grow).
    pub fn ensure(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        needed: usize,
        keep: impl Fn(usize) -> usize,
    ) -> Result<(usize, usize)> {
        if needed <= self.capacity {
            return Ok((0, 0));
        }
        let per_slot = self.max_positions / self.slots;
        if needed > per_slot {
            return Err(Error::backend(
                "wgpu",
                format!(
                    "{needed} positions in each of {} KV-cache slots do not fit one storage \
                     binding of this adapter's KV cache (at most {} positions in all)",
                    self.slots, self.max_positions
                ),
            ));
        }
        let capacity = needed
            .max(2 * self.capacity)
            .max(GRANULE)
            .next_multiple_of(GRANULE)
            .min(per_slot);
        let bytes = (self.slots * capacity * self.width * 4) as u64;
        let make = |label: &str| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let mut created = 0;
        let row = (self.width * 4) as u64;
        let mut k = Vec::with_capacity(self.layers);
        let mut v = Vec::with_capacity(self.layers);
        for l in 0..self.layers {
            let (nk, nv) = (make("k_cache"), make("v_cache"));
            created += 2;
            // Each slot's kept positions move to where the slot starts now.
            for s in 0..self.slots {
                let n = keep(s).min(self.capacity) as u64 * row;
                if n > 0 {
                    let (from, to) = (
                        (s * self.capacity) as u64 * row,
                        (s * capacity) as u64 * row,
                    );
                    encoder.copy_buffer_to_buffer(&self.k[l], from, &nk, to, n);
                    encoder.copy_buffer_to_buffer(&self.v[l], from, &nv, to, n);
                }
            }
            k.push(nk);
            v.push(nv);
        }
        self.k = k;
        self.v = v;
        let mut uploaded = 0;
        for t in &mut self.tables {
            let values = t.values(capacity);
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("rope_table"),
                size: (values.len().max(1) * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&values));
            uploaded += values.len() * 4;
            created += 1;
            t.buffer = Some(buffer);
        }
        self.capacity = capacity;
        Ok((created, uploaded))
    }
}

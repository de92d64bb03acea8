//! Per-dispatch GPU time for `Backend::profile_step`: each dispatch of a profiled step runs in
//! its own compute pass whose beginning and end write timestamps (`TIMESTAMP_QUERY`, which
//! lavapipe, Vulkan, Metal and DX12 adapters have; timestamps inside a pass would need a second
//! feature fewer adapters offer). The queries are resolved after the step and read back with it.

use crate::device::Gpu;
use crate::readback;
use unmask_core::backend::KernelTime;
use unmask_core::{Error, Result};

/// Most queries one query set may hold (wgpu's `QUERY_SET_MAX_QUERIES`).
pub const MAX_QUERIES: u32 = 4096;

pub struct Timer {
    set: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    capacity: u32,
    /// (op, kernel) of each timed dispatch, in order: queries 2i and 2i + 1.
    entries: Vec<(usize, &'static str)>,
}

impl Timer {
    /// A timer for up to `dispatches` dispatches, or why the adapter cannot time them.
    pub fn new(gpu: &Gpu, dispatches: usize) -> Result<Timer> {
        if !gpu.timestamps {
            return Err(Error::backend(
                "wgpu",
                format!("{} has no timestamp queries to profile with", gpu.info.name),
            ));
        }
        let capacity = (2 * dispatches.max(1)) as u64;
        if capacity > MAX_QUERIES as u64 {
            return Err(Error::Invalid(format!(
                "a profiled step may time at most {} dispatches; this one has {dispatches} (use a \
                 shorter window or fewer layers)",
                MAX_QUERIES / 2
            )));
        }
        let capacity = capacity as u32;
        let device = &gpu.device;
        let bytes = capacity as u64 * 8;
        Ok(Timer {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile_resolved"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile_readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            capacity,
            entries: Vec::new(),
        })
    }

    /// The timestamp writes of the next dispatch's pass.
    pub fn next(
        &mut self,
        op: usize,
        kernel: &'static str,
    ) -> Result<wgpu::ComputePassTimestampWrites<'_>> {
        let at = 2 * self.entries.len() as u32;
        if at + 2 > self.capacity {
            return Err(Error::backend(
                "wgpu",
                "more dispatches than the timer was made for",
            ));
        }
        self.entries.push((op, kernel));
        Ok(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(at),
            end_of_pass_write_index: Some(at + 1),
        })
    }

    /// Records the copy of the written timestamps to the readback buffer (before submitting).
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let used = 2 * self.entries.len() as u32;
        if used == 0 {
            return;
        }
        encoder.resolve_query_set(&self.set, 0..used, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, used as u64 * 8);
    }

    /// Each timed dispatch's seconds, after the submission that resolved them.
    pub async fn read(self, gpu: &Gpu) -> Result<Vec<KernelTime>> {
        let words = readback::read(gpu, &self.readback, self.entries.len() as u64 * 16).await?;
        let ticks: Vec<u64> = words
            .chunks_exact(2)
            .map(|w| w[0] as u64 | (w[1] as u64) << 32)
            .collect();
        let period_ns = gpu.queue.get_timestamp_period() as f64;
        Ok(seconds(&self.entries, &ticks, period_ns))
    }
}

/// Pairs of (begin, end) ticks as kernel times; a pair that runs backwards (a timestamp the
/// adapter did not write, a counter reset) counts as zero rather than as an absurd figure.
fn seconds(entries: &[(usize, &'static str)], ticks: &[u64], period_ns: f64) -> Vec<KernelTime> {
    entries
        .iter()
        .zip(ticks.chunks_exact(2))
        .map(|(&(op, kernel), t)| KernelTime {
            op,
            fused: Vec::new(),
            kernel: kernel.to_string(),
            seconds: t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-9,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_become_seconds_and_backwards_pairs_zero() {
        let entries = [(0, "embed"), (3, "matmul"), (3, "matmul_narrow")];
        let ticks = [100, 1100, 2000, 1500, 5, 5];
        let t = seconds(&entries, &ticks, 2.0);
        assert_eq!(t.len(), 3);
        assert!((t[0].seconds - 2e-6).abs() < 1e-15);
        assert_eq!(
            (t[1].op, t[1].kernel.as_str(), t[1].seconds),
            (3, "matmul", 0.0)
        );
        assert_eq!(t[2].seconds, 0.0);
    }
}

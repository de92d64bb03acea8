//! Reading a buffer back: `map_async` resolves through a callback, turned here into a future so
//! the same code awaits it in the browser (where the event loop runs the callback) and blocks on
//! it natively (after `Gpu::wait` has run the callback).

use crate::device::Gpu;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use unmask_core::{Error, Result};

#[derive(Default)]
struct Shared {
    done: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

struct Mapped(Arc<Mutex<Shared>>);

impl Future for Mapped {
    type Output = std::result::Result<(), wgpu::BufferAsyncError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match s.done.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The first `len` bytes (a multiple of 4) of a `MAP_READ` buffer as words, after the work
/// submitted so far.
pub async fn read(gpu: &Gpu, buffer: &wgpu::Buffer, len: u64) -> Result<Vec<u32>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let shared: Arc<Mutex<Shared>> = Arc::default();
    let cb = shared.clone();
    buffer.map_async(wgpu::MapMode::Read, 0..len, move |r| {
        let mut s = cb.lock().unwrap_or_else(|p| p.into_inner());
        s.done = Some(r);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    });
    gpu.wait()?;
    Mapped(shared)
        .await
        .map_err(|e| Error::backend("wgpu", format!("reading results back: {e}")))?;
    let words = {
        let view = buffer
            .slice(0..len)
            .get_mapped_range()
            .map_err(|e| Error::backend("wgpu", format!("reading results back: {e}")))?;
        bytemuck::pod_collect_to_vec::<u8, u32>(&view)
    };
    buffer.unmap();
    Ok(words)
}

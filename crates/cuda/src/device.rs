//! One CUDA context and stream with the compiled kernels: device memory, copies and launches.
//! Device memory is addressed by raw pointers (kernels take them as arguments and CUDA graphs
//! keep them), so cudarc's per-slice event tracking is switched off: everything runs in order
//! on the one stream.

use crate::availability::{cuda_error, guarded, probe, DeviceInfo};
use crate::compile::Toolchain;
use crate::emulator::{self, Emulator};
use crate::kernels::{Kernels, Origin};
use cudarc::driver::{result, sys, CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::ffi::c_void;
use std::sync::Arc;
use unmask_core::Result;

pub(crate) fn driver<T>(what: &str, r: std::result::Result<T, result::DriverError>) -> Result<T> {
    r.map_err(|e| cuda_error(format!("{what}: {e}")))
}

/// A device allocation (freed on drop) and its address.
pub struct DeviceMem {
    /// Owns the allocation (freed when dropped); kernels use `ptr`.
    _owner: Owner,
    ptr: u64,
    len: usize,
}

// Held for their drop (which frees the memory), never read.
#[allow(dead_code)]
enum Owner {
    Cuda(CudaSlice<u8>),
    /// The emulator's device memory: host memory, 256-byte aligned as cudaMalloc's.
    Host(Vec<Aligned>),
}

#[repr(C, align(256))]
#[derive(Clone, Copy)]
struct Aligned([u8; 256]);

impl DeviceMem {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
}

/// A kernel argument: pointers travel as 64-bit values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    Ptr(u64),
    U32(u32),
    U64(u64),
    F32(f32),
}

impl Arg {
    /// The 8-byte word a launch passes it in: pointers and u64 whole, 4-byte values in the low
    /// half (their value on a little-endian host).
    pub fn word(self) -> u64 {
        match self {
            Arg::Ptr(v) | Arg::U64(v) => v,
            Arg::U32(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// One kernel launch, fully resolved (pointers included): what a step records or captures.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub kernel: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
    pub args: Vec<Arg>,
    /// The graph op it computes (profiles add kernel times up per op family).
    pub op: usize,
}

pub struct Device {
    pub info: DeviceInfo,
    pub toolchain: Toolchain,
    imp: Imp,
}

enum Imp {
    Cuda {
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        kernels: Kernels,
    },
    /// `UNMASK_CUDA_EMULATOR=1`: the kernels on the CPU (emulator.rs).
    Emulated(Emulator, Origin),
}

impl Device {
    /// Checks for the driver, NVRTC and the device before cudarc touches them, then creates the
    /// context and compiles the kernels.
    pub fn open(ordinal: usize) -> Result<Device> {
        if emulator::enabled() {
            let emu = Emulator::load()?;
            let origin = Origin::Emulated(emu.library.clone());
            return Ok(Device {
                info: emulator::device_info(),
                toolchain: emulator::toolchain(),
                imp: Imp::Emulated(emu, origin),
            });
        }
        let info = probe(ordinal)?;
        let toolchain = Toolchain::query()?;
        let (ctx, stream) = guarded("creating the CUDA context", || {
            let ctx = driver("creating the CUDA context", CudaContext::new(ordinal))?;
            // SAFETY: one stream orders every use of every allocation of this backend.
            unsafe { ctx.disable_event_tracking() };
            // Stream capture needs a stream other than the legacy default stream.
            let stream = driver("creating a CUDA stream", ctx.new_stream())?;
            Ok((ctx, stream))
        })?;
        let kernels = Kernels::load(&ctx, &info, &toolchain)?;
        Ok(Device {
            info,
            toolchain,
            imp: Imp::Cuda {
                ctx,
                stream,
                kernels,
            },
        })
    }

    /// Whether this is the CPU emulator (which captures no CUDA graphs).
    pub fn emulated(&self) -> bool {
        matches!(self.imp, Imp::Emulated(..))
    }

    /// Where the kernels came from.
    pub fn origin(&self) -> &Origin {
        match &self.imp {
            Imp::Cuda { kernels, .. } => &kernels.origin,
            Imp::Emulated(_, origin) => origin,
        }
    }

    /// The stream CUDA graphs are captured on (the emulator captures none).
    fn capture_stream(&self) -> Result<&Arc<CudaStream>> {
        match &self.imp {
            Imp::Cuda { stream, .. } => Ok(stream),
            Imp::Emulated(..) => Err(cuda_error("the CPU emulator captures no CUDA graphs")),
        }
    }

    pub fn bind(&self) -> Result<()> {
        match &self.imp {
            Imp::Cuda { ctx, .. } => driver("binding the CUDA context", ctx.bind_to_thread()),
            Imp::Emulated(..) => Ok(()),
        }
    }

    /// `bytes` of zeroed device memory (at least one byte).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceMem> {
        let len = bytes.max(1);
        let stream = match &self.imp {
            Imp::Cuda { stream, .. } => stream,
            Imp::Emulated(..) => {
                let chunks = vec![Aligned([0; 256]); len.div_ceil(256)];
                let ptr = chunks.as_ptr() as u64;
                return Ok(DeviceMem {
                    _owner: Owner::Host(chunks),
                    ptr,
                    len,
                });
            }
        };
        let slice = stream.alloc_zeros::<u8>(len).map_err(|e| {
            cuda_error(format!(
                "allocating {:.1} MiB of device memory: {e}",
                len as f64 / (1 << 20) as f64
            ))
        })?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(stream);
            ptr
        };
        Ok(DeviceMem {
            _owner: Owner::Cuda(slice),
            ptr,
            len,
        })
    }

    /// Copies `src` to `dst + offset` (in stream order).
    pub fn upload<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let Imp::Cuda { stream, .. } = &self.imp else {
            // SAFETY: as below; the destination is host memory of this backend.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr() as *const u8,
                    dst as *mut u8,
                    std::mem::size_of_val(src),
                )
            };
            return Ok(());
        };
        self.bind()?;
        // SAFETY: the destination range lies inside an allocation of this backend (callers size
        // it); a pageable source is staged before this call returns.
        driver("copying to the device", unsafe {
            result::memcpy_htod_async(dst, src, stream.cu_stream())
        })
    }

    /// Copies device memory at `src` into `dst` and waits for it.
    pub fn download<T: Copy>(&self, src: u64, dst: &mut [T]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let Imp::Cuda { stream, .. } = &self.imp else {
            // SAFETY: as for `upload`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src as *const u8,
                    dst.as_mut_ptr() as *mut u8,
                    std::mem::size_of_val(dst),
                )
            };
            return Ok(());
        };
        self.bind()?;
        // SAFETY: as for `upload`; the stream is synchronised before `dst` is used.
        driver("copying from the device", unsafe {
            result::memcpy_dtoh_async(dst, src, stream.cu_stream())
        })?;
        self.sync()
    }

    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        let Imp::Cuda { stream, .. } = &self.imp else {
            // SAFETY: both ranges lie inside allocations of this backend (host memory here).
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
            return Ok(());
        };
        self.bind()?;
        // SAFETY: both ranges lie inside allocations of this backend.
        driver("copying on the device", unsafe {
            result::memcpy_dtod_async(dst, src, bytes, stream.cu_stream())
        })
    }

    pub fn sync(&self) -> Result<()> {
        match &self.imp {
            Imp::Cuda { stream, .. } => driver("running on the GPU", stream.synchronize()),
            Imp::Emulated(..) => Ok(()),
        }
    }

    pub fn launch(&self, l: &Launch) -> Result<()> {
        let (stream, kernels) = match &self.imp {
            Imp::Cuda {
                stream, kernels, ..
            } => (stream, kernels),
            Imp::Emulated(emu, _) => return emu.launch(l),
        };
        let f = kernels.get(&l.kernel)?;
        let mut values: Vec<u64> = l.args.iter().map(|a| a.word()).collect();
        // Each parameter points at its own 8-byte slot; a 4-byte parameter reads the slot's low
        // half, which is its value on a little-endian host.
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: argument count and types follow the kernel's signature (record.rs builds
        // them next to each kernel's declaration); every pointer is a live device allocation.
        driver(&format!("launching `{}`", l.kernel), unsafe {
            result::launch_kernel(
                f.cu_function(),
                l.grid,
                l.block,
                l.shared_bytes,
                stream.cu_stream(),
                &mut params,
            )
        })
    }

    /// Launches `launches` in order with a CUDA event before the first and after each, waits,
    /// and returns each launch's seconds (the time between its two events).
    pub fn launch_timed(&self, launches: &[Launch]) -> Result<Vec<f64>> {
        let Imp::Cuda { ctx, stream, .. } = &self.imp else {
            // The emulator runs each launch to completion: wall time is its time.
            return launches
                .iter()
                .map(|l| {
                    let t = std::time::Instant::now();
                    self.launch(l).map(|()| t.elapsed().as_secs_f64())
                })
                .collect();
        };
        self.bind()?;
        let timed = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let events = (0..=launches.len())
            .map(|_| driver("creating a CUDA event", ctx.new_event(timed)))
            .collect::<Result<Vec<_>>>()?;
        driver("recording a CUDA event", events[0].record(stream))?;
        for (l, e) in launches.iter().zip(&events[1..]) {
            self.launch(l)?;
            driver("recording a CUDA event", e.record(stream))?;
        }
        self.sync()?;
        events
            .windows(2)
            .map(|w| driver("timing a kernel", w[0].elapsed_ms(&w[1])).map(|ms| ms as f64 / 1e3))
            .collect()
    }

    /// Device memory free and total, bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        if self.emulated() {
            let m = self.info.memory_bytes;
            return Ok((m, m));
        }
        self.bind()?;
        driver("reading device memory", result::mem_get_info())
    }

    pub fn begin_capture(&self) -> Result<()> {
        let stream = self.capture_stream()?;
        driver(
            "starting a CUDA graph capture",
            stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
        )
    }

    pub fn end_capture(&self) -> Result<Option<cudarc::driver::CudaGraph>> {
        let stream = self.capture_stream()?;
        driver(
            "instantiating a CUDA graph",
            stream.end_capture(sys::CUgraphInstantiate_flags(0)),
        )
    }
}

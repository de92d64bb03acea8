//! Adapters and the device: listing what wgpu sees, choosing one (by name, or the best kind),
//! and opening it with the adapter's own limits (the 128 MiB default binding limit is what the
//! weight splitting is for, but asking for more where the adapter has it costs nothing).
//!
//! Everything here is async so that the browser (where wgpu cannot block) uses the same code;
//! native callers block on it with `pollster`.

use std::sync::{Arc, Mutex};
use unmask_core::{Error, Result};

/// Environment variable naming the adapter to use (a case-insensitive substring of its name).
pub const ADAPTER_ENV: &str = "UNMASK_ADAPTER";

/// What `unmask devices` shows about one adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// A software rasteriser (lavapipe, SwiftShader, WARP): works everywhere, slowly.
    pub is_cpu: bool,
    /// The limits that matter to this backend, by wgpu's names.
    pub limits: Vec<(String, u64)>,
    pub features: Vec<String>,
}

fn report(adapter: &wgpu::Adapter) -> AdapterReport {
    let info = adapter.get_info();
    let l = adapter.limits();
    let limits = vec![
        (
            "max_storage_buffer_binding_size".to_string(),
            l.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size".to_string(), l.max_buffer_size),
        (
            "max_storage_buffers_per_shader_stage".to_string(),
            l.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "max_compute_workgroup_storage_size".to_string(),
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup".to_string(),
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroups_per_dimension".to_string(),
            l.max_compute_workgroups_per_dimension as u64,
        ),
    ];
    let features = adapter
        .features()
        .iter_names()
        .map(|(name, _)| name.to_string())
        .collect();
    AdapterReport {
        name: info.name.clone(),
        backend: info.backend.to_str().to_string(),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        is_cpu: is_software(&info),
        limits,
        features,
    }
}

/// The wgpu instance. In release builds indirect dispatches are not validated (wgpu would run
/// one extra dispatch per indirect one to check its counts; the MoE plan's counts are bounded
/// by the shaders that write them); `WGPU_VALIDATION_INDIRECT_CALL=1` turns it back on, and the
/// other `WGPU_*` variables work as usual.
fn instance() -> wgpu::Instance {
    let mut d = wgpu::InstanceDescriptor::new_without_display_handle();
    if !cfg!(debug_assertions) {
        d.flags
            .remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
    }
    wgpu::Instance::new(d.with_env())
}

/// Every adapter wgpu can see, best first (see [`rank`]).
async fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    let mut list = instance.enumerate_adapters(wgpu::Backends::all()).await;
    // The browser hands out one adapter at a time, on request.
    #[cfg(target_arch = "wasm32")]
    let mut list: Vec<wgpu::Adapter> = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .into_iter()
        .collect();
    list.sort_by_key(|a| rank(&a.get_info()));
    list
}

/// Lower is better: hardware before software, compute-first APIs before OpenGL, discrete before
/// integrated.
fn rank(info: &wgpu::AdapterInfo) -> (bool, u8, u8) {
    let api = match info.backend {
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    (info.device_type == wgpu::DeviceType::Cpu, api, kind)
}

pub async fn list_adapters_async() -> Vec<AdapterReport> {
    adapters(&instance()).await.iter().map(report).collect()
}

#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<AdapterReport> {
    pollster::block_on(list_adapters_async())
}

/// The adapter whose name contains `name` (case-insensitive), or else the best one that is not
/// OpenGL (wgpu's GL backend is a fallback for drawing, not for compute; it is used only when
/// named).
fn select<'a>(all: &'a [wgpu::Adapter], name: Option<&str>) -> Result<&'a wgpu::Adapter> {
    match name {
        Some(want) => {
            let w = want.to_lowercase();
            all.iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&w))
                .ok_or_else(|| {
                    let names: Vec<String> = all
                        .iter()
                        .map(|a| {
                            let i = a.get_info();
                            format!("{} ({})", i.name, i.backend.to_str())
                        })
                        .collect();
                    Error::backend(
                        "wgpu",
                        format!(
                            "no adapter named like `{want}`; available: {}",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    )
                })
        }
        None => all
            .iter()
            .find(|a| a.get_info().backend != wgpu::Backend::Gl)
            .ok_or_else(|| {
                Error::backend(
                    "wgpu",
                    "no GPU adapter found (no Vulkan, Metal, DX12 or WebGPU device; \
                     on Linux without a GPU, install mesa-vulkan-drivers for lavapipe)",
                )
            }),
    }
}

/// The adapter `Gpu::open(name)` would open (`name` falling back to `UNMASK_ADAPTER`), without
/// opening it: lets callers choose a backend, or skip tests, before loading a model.
pub async fn probe_async(name: Option<&str>) -> Result<AdapterReport> {
    let env = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty());
    let name = name.map(str::to_string).or(env);
    let all = adapters(&instance()).await;
    select(&all, name.as_deref()).map(report)
}

#[cfg(not(target_arch = "wasm32"))]
pub fn probe(name: Option<&str>) -> Result<AdapterReport> {
    pollster::block_on(probe_async(name))
}

/// Set (CI, on lavapipe) to make test suites fail, rather than skip, when no adapter exists.
pub const REQUIRE_ENV: &str = "UNMASK_REQUIRE_WGPU";

/// For test suites and benches: the default adapter, or `None` after printing
/// `wgpu: SKIPPED (why)`. Panics instead of skipping when [`REQUIRE_ENV`] is set.
#[cfg(not(target_arch = "wasm32"))]
pub fn probe_or_skip() -> Option<AdapterReport> {
    match probe(None) {
        Ok(a) => Some(a),
        Err(e) => {
            let why = e.to_string();
            let why = why
                .strip_prefix("backend wgpu: ")
                .unwrap_or(&why)
                .to_string();
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set but no wgpu adapter is available: {why}"
            );
            eprintln!("wgpu: SKIPPED ({why})");
            None
        }
    }
}

/// An opened device with what the backend needs to know about it.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Whether the device writes timestamp queries (profiled steps).
    pub timestamps: bool,
    /// Whether the device runs subgroup operations.
    pub subgroups: bool,
    /// The first error wgpu reported outside an error scope, turned into a step error.
    errors: Arc<Mutex<Option<String>>>,
}

/// Whether an adapter is a software rasteriser (lavapipe, SwiftShader, WARP).
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

impl Gpu {
    /// A software adapter (lavapipe, SwiftShader, WARP).
    pub fn is_software(&self) -> bool {
        is_software(&self.info)
    }

    /// Opens the adapter chosen by [`select`].
    pub async fn open(name: Option<&str>) -> Result<Gpu> {
        let instance = instance();
        let all = adapters(&instance).await;
        let chosen = select(&all, name)?;
        let info = chosen.get_info();
        let limits = chosen.limits();
        // Timestamps cost nothing unless a profiled step writes them (`bench --profile`).
        // Subgroups only natively: the browser's WGSL would need `enable subgroups;`, which
        // naga (and so the native path) rejects.
        let wanted = if cfg!(target_arch = "wasm32") {
            wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP
        };
        let features = chosen.features() & wanted;
        let (device, queue) = chosen
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("unmask"),
                required_features: features,
                required_limits: limits.clone(),
                memory_hints: wgpu::MemoryHints::Performance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::backend("wgpu", format!("{}: {e}", info.name)))?;
        let errors: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            errors,
        })
    }

    /// The first device error since the last call, if any.
    pub fn take_error(&self) -> Option<String> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The largest range one storage binding may cover, in bytes (a multiple of 4).
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            & !3
    }

    pub fn describe(&self) -> String {
        format!(
            "wgpu: {} ({}, {:?})",
            self.info.name,
            self.info.backend.to_str(),
            self.info.device_type
        )
    }

    /// Waits for submitted work (and runs map callbacks). A no-op in the browser, where the
    /// event loop does it.
    pub fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::backend("wgpu", format!("waiting for the device: {e}")))?;
        Ok(())
    }
}

//! Whether CUDA can run here. cudarc loads libcuda and libnvrtc lazily and panics when one is
//! missing (or lacks a symbol), so every check below looks for the libraries first and runs the
//! first driver calls under `catch_unwind`: a machine without a driver or GPU gets an error.

use cudarc::driver::{result, sys};
use unmask_core::{Error, Result};

/// The device a backend would use.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
    /// CUDA devices visible to this process.
    pub device_count: usize,
}

pub(crate) fn cuda_error(message: impl Into<String>) -> Error {
    Error::backend("cuda", message)
}

/// Runs `f`, turning a panic inside cudarc (a library or symbol that could not be loaded) into
/// an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(cuda_error(format!("{what}: {msg}")))
        }
    }
}

/// The device `ordinal` if CUDA can run here, else why not ("no CUDA driver", "no CUDA
/// device", "NVRTC not found", ...).
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    if crate::emulator::enabled() {
        return match ordinal {
            0 => Ok(crate::emulator::device_info()),
            _ => Err(cuda_error(format!(
                "CUDA device {ordinal} does not exist (the CPU emulator is device 0)"
            ))),
        };
    }
    // SAFETY: these only try to dlopen the libraries by their usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(cuda_error(
            "no CUDA driver (libcuda.so was not found; install the NVIDIA driver)",
        ));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(cuda_error(
            "NVRTC was not found (libnvrtc.so from the CUDA toolkit, 12.x; the kernels are \
             compiled through it when the model loads)",
        ));
    }
    guarded("initialising the CUDA driver", || {
        result::init()
            .map_err(|e| cuda_error(format!("the CUDA driver did not initialise: {e}")))?;
        let count = result::device::get_count()
            .map_err(|e| cuda_error(format!("counting CUDA devices: {e}")))?;
        if count <= 0 {
            return Err(cuda_error("no CUDA device (the driver sees no GPU)"));
        }
        if ordinal >= count as usize {
            return Err(cuda_error(format!(
                "CUDA device {ordinal} does not exist ({count} device(s))"
            )));
        }
        let dev = result::device::get(ordinal as i32)
            .map_err(|e| cuda_error(format!("CUDA device {ordinal}: {e}")))?;
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into());
        let attr = |a| unsafe { result::device::get_attribute(dev, a) };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .map_err(|e| cuda_error(format!("CUDA device {ordinal}: {e}")))?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
            .map_err(|e| cuda_error(format!("CUDA device {ordinal}: {e}")))?;
        let memory_bytes = unsafe { result::device::total_mem(dev) }.unwrap_or(0);
        Ok(DeviceInfo {
            ordinal,
            name,
            compute_capability: (major, minor),
            memory_bytes,
            device_count: count as usize,
        })
    })
}

/// What `unmask devices` shows about CUDA: the versions, every device and whether NVRTC can
/// compile for it, and where compiled kernels are cached.
#[derive(Debug, Clone)]
pub struct Survey {
    pub toolchain: crate::compile::Toolchain,
    /// Each device, with the `sm_XY` the kernels compile for or why they cannot.
    pub devices: Vec<(DeviceInfo, std::result::Result<i32, String>)>,
    /// The compiled-kernel cache (`None`: off, or no home directory).
    pub cache: Option<std::path::PathBuf>,
}

/// The survey, or why CUDA cannot run here at all.
pub fn survey() -> Result<Survey> {
    if crate::emulator::enabled() {
        // No GPU target: the kernels are built by clang++ for the CPU, kept in the library dir.
        let how = "kernels built by clang++ for the CPU (UNMASK_CUDA_EMULATOR=1)";
        return Ok(Survey {
            toolchain: crate::emulator::toolchain(),
            devices: vec![(crate::emulator::device_info(), Err(how.into()))],
            cache: Some(crate::emulator::library_dir()),
        });
    }
    let first = probe(0)?;
    let toolchain = crate::compile::Toolchain::query()?;
    let mut devices = Vec::with_capacity(first.device_count);
    for ordinal in 0..first.device_count {
        let info = if ordinal == 0 {
            first.clone()
        } else {
            probe(ordinal)?
        };
        let target = toolchain
            .target(info.compute_capability, &info.name)
            .map_err(|e| e.to_string().replace("backend cuda: ", ""));
        devices.push((info, target));
    }
    Ok(Survey {
        toolchain,
        devices,
        cache: crate::module_cache::ModuleCache::from_env().map(|c| c.dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_cudarc_becomes_an_error() {
        let r: Result<()> = guarded("loading", || panic!("Missing symbol cuFoo"));
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("backend cuda") && msg.contains("Missing symbol cuFoo"),
            "{msg}"
        );
    }
}

//! NVRTC to a cubin for the device's exact architecture, and the versions that decide whether
//! that can work.
//!
//! PTX is JIT-compiled by the driver, which fails (UNSUPPORTED_PTX_VERSION) whenever libnvrtc
//! is newer than the driver, and costs a second compilation at every load. A cubin for `sm_XY`
//! needs no JIT: the driver loads it as long as it supports the toolkit's major version. When
//! the pieces do not fit (an NVRTC that does not know the GPU, a driver older than NVRTC, a
//! missing `libnvrtc-builtins.so`) the error names the driver, NVRTC and compute capability.

use crate::availability::{cuda_error, guarded};
use cudarc::driver::sys as drv;
use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, c_int, CStr, CString};
use unmask_core::Result;

/// The CUDA driver's and NVRTC's versions and the architectures NVRTC can compile for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// The CUDA version the driver supports (12.6 for a driver reporting 12060).
    pub driver: (i32, i32),
    pub nvrtc: (i32, i32),
    /// `sm_XY` numbers NVRTC compiles for (`90` for sm_90).
    pub archs: Vec<i32>,
}

fn version(v: (i32, i32)) -> String {
    format!("{}.{}", v.0, v.1)
}

impl Toolchain {
    /// Asks the driver and NVRTC (both libraries must be present: `probe` checked).
    pub fn query() -> Result<Toolchain> {
        let driver = guarded("reading the CUDA driver's version", || {
            let mut d: c_int = 0;
            // SAFETY: writes one int.
            let r = unsafe { drv::cuDriverGetVersion(&mut d) };
            if r != drv::CUresult::CUDA_SUCCESS {
                return Err(cuda_error(format!("reading the driver's version: {r:?}")));
            }
            Ok((d / 1000, (d % 1000) / 10))
        })?;
        let (nvrtc, archs) = nvrtc_info()?;
        Ok(Toolchain {
            driver,
            nvrtc,
            archs,
        })
    }

    /// One line for `unmask devices` and error messages.
    pub fn describe(&self) -> String {
        let archs = match (self.archs.first(), self.archs.last()) {
            (Some(a), Some(b)) => format!("sm_{a} to sm_{b}"),
            _ => "no architectures".into(),
        };
        format!(
            "driver CUDA {}, NVRTC {} ({archs})",
            version(self.driver),
            version(self.nvrtc)
        )
    }

    /// The `sm_XY` to compile for on a device of compute capability `cc`, or why it cannot be.
    pub fn target(&self, cc: (i32, i32), gpu: &str) -> Result<i32> {
        let sm = cc.0 * 10 + cc.1;
        if self.archs.contains(&sm) {
            return Ok(sm);
        }
        // A cubin for X.y runs natively on X.z for z >= y (same major: binary compatible), so
        // the newest such architecture NVRTC knows serves (no PTX JIT either way).
        let same_major = self
            .archs
            .iter()
            .copied()
            .filter(|&a| a / 10 == cc.0 && a % 10 <= cc.1)
            .max();
        if let Some(a) = same_major {
            return Ok(a);
        }
        Err(cuda_error(format!(
            "NVRTC {} cannot compile for {gpu} (compute capability {}.{}, sm_{sm}); this \
                 machine has {}. Install the NVRTC (libnvrtc.so) of a CUDA toolkit that \
                 supports sm_{sm}",
            version(self.nvrtc),
            cc.0,
            cc.1,
            self.describe()
        )))
    }

    /// Why a module compiled here did not load, in terms a user can act on.
    pub fn load_failure(&self, sm: i32, gpu: &str, e: impl std::fmt::Display) -> String {
        let mut msg = format!(
            "the driver could not load the kernels compiled for {gpu} (sm_{sm}): {e}; {}",
            self.describe()
        );
        if self.nvrtc.0 > self.driver.0 {
            msg.push_str(&format!(
                ". NVRTC {} is newer than the driver (CUDA {}): update the NVIDIA driver, or \
                 put an NVRTC {}.x first on LD_LIBRARY_PATH",
                version(self.nvrtc),
                version(self.driver),
                self.driver.0
            ));
        }
        msg
    }
}

/// For checks that need NVRTC alone (no driver or GPU; the tests): whether libnvrtc loads
/// here. When it does not, `check` is reported skipped (past the test harness's capture), or
/// fails under `UNMASK_REQUIRE_NVRTC` (CI, which installs it).
pub fn nvrtc_or_skip(check: &str) -> bool {
    // SAFETY: only tries to dlopen libnvrtc by its usual names.
    if unsafe { sys::is_culib_present() } {
        return true;
    }
    assert!(
        std::env::var_os("UNMASK_REQUIRE_NVRTC").is_none(),
        "UNMASK_REQUIRE_NVRTC is set but libnvrtc was not found (LD_LIBRARY_PATH?)"
    );
    use std::io::Write;
    let _ =
        std::io::stderr().write_all(format!("{check}: SKIPPED (no libnvrtc here)\n").as_bytes());
    false
}

/// NVRTC's version and the `sm_XY` numbers it compiles for. NVRTC alone answers (no driver, no
/// GPU): the kernels compile to cubins on any machine with libnvrtc (kernels_compile.rs).
/// libnvrtc must be present (`cudarc::nvrtc::sys::is_culib_present`).
pub fn nvrtc_info() -> Result<((i32, i32), Vec<i32>)> {
    guarded("reading NVRTC's version", || {
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: writes two ints.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| cuda_error(format!("reading NVRTC's version: {e:?}")))?;
        let mut count: c_int = 0;
        // SAFETY: writes one int.
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) }
            .result()
            .map_err(|e| cuda_error(format!("asking NVRTC for its architectures: {e:?}")))?;
        // NVRTC writes `count` ints, so a count beyond the buffer is refused, not clamped.
        if !(0..=1024).contains(&count) {
            return Err(cuda_error(format!(
                "NVRTC reports {count} supported architectures (expected 0 to 1024)"
            )));
        }
        let mut archs = vec![0 as c_int; count as usize];
        if !archs.is_empty() {
            // SAFETY: `archs` holds the `count` ints NVRTC writes.
            unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
                .result()
                .map_err(|e| cuda_error(format!("asking NVRTC for its architectures: {e:?}")))?;
        }
        Ok(((major, minor), archs))
    })
}

/// NVRTC's options for `sm`: a cubin for exactly that architecture (a real `sm_XY`, not a
/// virtual `compute_XY`, which would give PTX).
pub fn options(sm: i32) -> Vec<String> {
    vec![format!("--gpu-architecture=sm_{sm}")]
}

/// Compiles `src` with `options` to a cubin.
pub fn cubin(src: &str, name: &str, options: &[String], tc: &Toolchain) -> Result<Vec<u8>> {
    let src = CString::new(src).map_err(|_| cuda_error("kernel source holds a NUL byte"))?;
    let name = CString::new(name).map_err(|_| cuda_error("program name holds a NUL byte"))?;
    guarded("compiling the kernels with NVRTC", || {
        let prog = result::create_program(&src, Some(&name))
            .map_err(|e| cuda_error(format!("NVRTC could not create a program: {e:?}")))?;
        let out = compile_program(prog, options, tc);
        // SAFETY: `prog` came from create_program and is destroyed once.
        unsafe { result::destroy_program(prog) }.ok();
        out
    })
}

fn compile_program(prog: sys::nvrtcProgram, options: &[String], tc: &Toolchain) -> Result<Vec<u8>> {
    // SAFETY: `prog` is a live program; the options are copied into C strings by the call.
    if let Err(e) = unsafe { result::compile_program(prog, options) } {
        let log = program_log(prog);
        let code = format!("{:?}", e.0);
        if code.contains("BUILTIN") || log.contains("builtins") {
            return Err(cuda_error(format!(
                "NVRTC {} could not load libnvrtc-builtins.so (it ships next to libnvrtc.so in \
                 the CUDA toolkit, same version; put that directory on LD_LIBRARY_PATH): \
                 {code} {log}",
                version(tc.nvrtc)
            )));
        }
        return Err(cuda_error(format!(
            "NVRTC {} could not compile the kernels ({code}, options {}):\n{log}",
            version(tc.nvrtc),
            options.join(" ")
        )));
    }
    let mut size = 0usize;
    // SAFETY: writes one size, then that many bytes into a buffer of that size.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| cuda_error(format!("NVRTC gave no cubin: {e:?}")))?;
    if size == 0 {
        return Err(cuda_error(
            "NVRTC gave an empty cubin (was a virtual architecture asked for?)",
        ));
    }
    let mut bin = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| cuda_error(format!("reading NVRTC's cubin: {e:?}")))?;
    Ok(bin)
}

fn program_log(prog: sys::nvrtcProgram) -> String {
    // SAFETY: `prog` is a live program; the log is NUL-terminated.
    match unsafe { result::get_program_log(prog) } {
        Ok(raw) if !raw.is_empty() => unsafe { CStr::from_ptr(raw.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(driver: (i32, i32), nvrtc: (i32, i32), archs: &[i32]) -> Toolchain {
        Toolchain {
            driver,
            nvrtc,
            archs: archs.to_vec(),
        }
    }

    #[test]
    fn the_exact_architecture_is_the_target() {
        let t = tc((12, 8), (12, 6), &[50, 60, 70, 75, 80, 86, 89, 90]);
        assert_eq!(t.target((9, 0), "H200").unwrap(), 90);
        assert_eq!(t.target((8, 6), "A10").unwrap(), 86);
    }

    #[test]
    fn an_nvrtc_that_does_not_know_the_gpu_is_named_with_its_versions() {
        let t = tc((12, 8), (12, 4), &[50, 60, 70, 80, 90]);
        let msg = t.target((10, 0), "B200").unwrap_err().to_string();
        for part in [
            "NVRTC 12.4",
            "B200",
            "compute capability 10.0",
            "sm_100",
            "driver CUDA 12.8",
            "sm_50 to sm_90",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg}");
        }
        // An older minor of the same major is binary compatible: sm_80 serves an sm_86 GPU.
        assert_eq!(t.target((8, 6), "A10").unwrap(), 80);
        // Another major never is.
        assert!(t.target((10, 0), "B200").is_err());
    }

    #[test]
    fn a_driver_older_than_nvrtc_is_said_to_be_the_cause() {
        let t = tc((12, 2), (13, 0), &[75, 80, 90]);
        let msg = t.load_failure(90, "H200", "CUDA_ERROR_UNSUPPORTED_PTX_VERSION");
        assert!(
            msg.contains("NVRTC 13.0 is newer than the driver (CUDA 12.2)"),
            "{msg}"
        );
        assert!(msg.contains("update the NVIDIA driver"), "{msg}");
        let same = tc((12, 8), (12, 6), &[90]).load_failure(90, "H200", "boom");
        assert!(!same.contains("newer than the driver"), "{same}");
    }

    #[test]
    fn options_ask_for_a_real_architecture() {
        let o = options(90);
        assert!(o.contains(&"--gpu-architecture=sm_90".to_string()), "{o:?}");
        assert!(!o.iter().any(|s| s.contains("compute_")), "{o:?}");
    }
}

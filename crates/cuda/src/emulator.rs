//! The CUDA backend on the CPU, for checking its host code and kernels where no GPU is
//! (`UNMASK_CUDA_EMULATOR=1`): the program of kernels/*.cu, compiled by clang++ as C++ against
//! `emulator/cuda_emu.h` (each block's threads as fibers switching at barriers and shuffles)
//! into a shared library, launched by name; device memory is host memory. It runs what CUDA
//! guarantees at barriers, not a GPU's concurrency (no races, memory order or timing), one
//! launch at a time, and slowly (a forward of the tiny fixtures takes seconds).

use crate::availability::{cuda_error, DeviceInfo};
use crate::device::Launch;
use sha2::{Digest, Sha256};
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use unmask_core::Result;

/// The variable that turns the emulator on.
pub const ENV: &str = "UNMASK_CUDA_EMULATOR";

const RUNTIME: &str = include_str!("../emulator/cuda_emu.h");

/// Whether `UNMASK_CUDA_EMULATOR=1`.
pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1")
}

/// What the emulated device reports (compute capability 9.0: the kernels make no use of it).
pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        ordinal: 0,
        name: "CPU emulator (kernels built by clang++)".into(),
        compute_capability: (9, 0),
        memory_bytes: 16 << 30,
        device_count: 1,
    }
}

/// `extern __shared__ T name[];` (dynamic shared memory, which C++ has no form of) as a pointer
/// to the launch's dynamic shared bytes.
fn dynamic_shared_as_pointer(src: &str) -> String {
    src.lines()
        .map(|line| match line.split_once("extern __shared__ ") {
            Some((indent, rest)) => {
                let decl = rest.split("[];").next().unwrap_or(rest);
                match decl.rsplit_once(' ') {
                    Some((ty, name)) => format!("{indent}{ty}* {name} = ({ty}*)emu::dyn_shared;"),
                    None => line.to_string(),
                }
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The runtime, then the program as the backend puts it together (each file after a #line),
/// then `tail`: one C++ translation unit.
pub fn source(tail: &str) -> String {
    let mut s = String::from(RUNTIME);
    for (name, text) in crate::kernels::SOURCES {
        s.push_str(&format!("\n#line 1 \"{name}\"\n"));
        s.push_str(&dynamic_shared_as_pointer(text));
    }
    s.push('\n');
    s.push_str(tail);
    s
}

/// clang++'s options for the emulated program.
const CXX_FLAGS: [&str; 4] = [
    "-std=c++17",
    "-O2",
    "-DUNMASK_EMULATOR",
    "-Wno-unknown-pragmas",
];

/// Compiles the C++ file `cpp` (from `source`) with `cxx` into `out`, with `extra` options
/// (`-fPIC -shared` for the backend's library); the error holds the compiler's output.
pub fn compile(cxx: &str, cpp: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    let run = Command::new(cxx)
        .args(CXX_FLAGS)
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(cpp)
        .output()
        .map_err(|e| cuda_error(format!("emulator: running {cxx}: {e}")))?;
    if !run.status.success() {
        return Err(cuda_error(format!(
            "emulator: {cxx} could not build the kernels:\n{}",
            String::from_utf8_lossy(&run.stderr)
        )));
    }
    Ok(())
}

/// The toolchain the emulated device reports: no driver, no NVRTC.
pub fn toolchain() -> crate::compile::Toolchain {
    crate::compile::Toolchain {
        driver: (0, 0),
        nvrtc: (0, 0),
        archs: Vec::new(),
    }
}

/// A clang++ that runs here (`UNMASK_CLANG` names one).
pub fn clang() -> Option<String> {
    if let Ok(c) = std::env::var("UNMASK_CLANG") {
        return Some(c);
    }
    [
        "clang++-16",
        "clang++-19",
        "clang++-17",
        "clang++-18",
        "clang++",
    ]
    .into_iter()
    .find(|c| Command::new(c).arg("--version").output().is_ok())
    .map(str::to_string)
}

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u64,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
) -> c_int;

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}
const RTLD_NOW: c_int = 2;

/// Where the emulator's libraries are kept, each under its program's SHA-256.
pub fn library_dir() -> PathBuf {
    std::env::temp_dir().join("unmask-cuda-emulator")
}

/// The emulated kernels, loaded.
pub struct Emulator {
    launch: LaunchFn,
    /// Where the library was built (for `unmask devices` and logs).
    pub library: PathBuf,
}

// SAFETY: the library serialises its launches behind one mutex.
unsafe impl Send for Emulator {}
unsafe impl Sync for Emulator {}

impl Emulator {
    /// The library, built once per program source (kept in the temporary directory under its
    /// SHA-256) and loaded once per process: backends opened on several threads at once share
    /// one build.
    pub fn load() -> Result<Emulator> {
        static LOADED: std::sync::Mutex<Option<(LaunchFn, PathBuf)>> = std::sync::Mutex::new(None);
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((launch, library)) = &*loaded {
            return Ok(Emulator {
                launch: *launch,
                library: library.clone(),
            });
        }
        let emu = Self::build_and_load()?;
        *loaded = Some((emu.launch, emu.library.clone()));
        Ok(emu)
    }

    fn build_and_load() -> Result<Emulator> {
        let mut tail = String::new();
        for name in crate::kernels::kernel_names() {
            tail.push_str(&format!("EMU_KERNEL({name})\n"));
        }
        tail.push_str("extern \"C\" __attribute__((visibility(\"default\"))) int emu_launch(const char* name, const uint64_t* args, unsigned nargs, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared) {\n");
        tail.push_str("    static const std::pair<const char*, emu::Body> table[] = {\n");
        for name in crate::kernels::kernel_names() {
            tail.push_str(&format!("        {{\"{name}\", emu_body_{name}}},\n"));
        }
        tail.push_str("    };\n    (void)nargs;\n    for (auto& [n, b] : table)\n        if (std::strcmp(n, name) == 0) return emu::launch_locked(b, args, {gx, gy, gz}, {bx, by, bz}, shared);\n    return -1;\n}\n");
        let src = source(&tail);
        let key = crate::module_cache::short_hex(&Sha256::digest(src.as_bytes()));
        let dir = library_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| cuda_error(format!("emulator: creating {}: {e}", dir.display())))?;
        let library = dir.join(format!("{key}.so"));
        if !library.exists() {
            let cxx = clang().ok_or_else(|| {
                cuda_error("the CUDA emulator needs clang++ (apt-get install clang-16)")
            })?;
            let cpp = dir.join(format!("{key}.{}.cpp", std::process::id()));
            let tmp = dir.join(format!("{key}.{}.so", std::process::id()));
            std::fs::write(&cpp, &src)
                .map_err(|e| cuda_error(format!("emulator: writing {}: {e}", cpp.display())))?;
            // Hidden symbols: the fiber switches call the runtime directly, not through the PLT.
            let built = compile(
                &cxx,
                &cpp,
                &tmp,
                &["-fPIC", "-shared", "-fvisibility=hidden"],
            );
            let _ = std::fs::remove_file(&cpp);
            built?;
            std::fs::rename(&tmp, &library)
                .map_err(|e| cuda_error(format!("emulator: {}: {e}", library.display())))?;
        }
        let path = CString::new(library.to_string_lossy().as_bytes())
            .map_err(|_| cuda_error("emulator: a library path with a NUL byte"))?;
        // SAFETY: a library this function built; its symbol has LaunchFn's C signature.
        let launch = unsafe {
            let h = dlopen(path.as_ptr(), RTLD_NOW);
            if h.is_null() {
                return Err(cuda_error(format!(
                    "emulator: could not load {}",
                    library.display()
                )));
            }
            let f = dlsym(h, c"emu_launch".as_ptr());
            if f.is_null() {
                return Err(cuda_error("emulator: the library has no emu_launch"));
            }
            std::mem::transmute::<*mut c_void, LaunchFn>(f)
        };
        Ok(Emulator { launch, library })
    }

    /// Runs `l` to completion.
    pub fn launch(&self, l: &Launch) -> Result<()> {
        let words: Vec<u64> = l.args.iter().map(|a| a.word()).collect();
        let name = CString::new(l.kernel.as_str())
            .map_err(|_| cuda_error("a kernel name with a NUL byte"))?;
        let (g, b) = (l.grid, l.block);
        // SAFETY: every pointer argument is an allocation of this backend (host memory here),
        // and the words follow the kernel's parameters (record.rs; checked against NVRTC's PTX).
        let r = unsafe {
            (self.launch)(
                name.as_ptr(),
                words.as_ptr(),
                words.len() as u32,
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                l.shared_bytes,
            )
        };
        match r {
            0 => Ok(()),
            -1 => Err(cuda_error(format!("emulator: no kernel `{}`", l.kernel))),
            e => Err(cuda_error(format!("emulator: `{}` failed ({e})", l.kernel))),
        }
    }
}

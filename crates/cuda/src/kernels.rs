//! The CUDA C sources (`kernels/*.cu`, compiled into the binary) and their module at load: one
//! NVRTC program made of `common.cuh` followed by every kernel file, compiled to a cubin for the
//! device (compile.rs) or taken from the disk cache (module_cache.rs), and a function handle per
//! kernel name.

use crate::availability::{cuda_error, guarded, DeviceInfo};
use crate::compile::{self, Toolchain};
use crate::module_cache::ModuleCache;
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use unmask_core::Result;

/// Every source file in program order (`common.cuh` first: the others use it).
pub const SOURCES: [(&str, &str); 10] = [
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("embed.cu", include_str!("../kernels/embed.cu")),
    ("rms_norm.cu", include_str!("../kernels/rms_norm.cu")),
    ("matmul.cu", include_str!("../kernels/matmul.cu")),
    ("rope.cu", include_str!("../kernels/rope.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("elementwise.cu", include_str!("../kernels/elementwise.cu")),
    ("moe.cu", include_str!("../kernels/moe.cu")),
    ("sample.cu", include_str!("../kernels/sample.cu")),
    ("random.cu", include_str!("../kernels/random.cu")),
];

/// Weight-format suffixes of the kernels that read stored weights.
pub const FORMATS: [&str; 5] = ["f32", "bf16", "f16", "q8_0", "q4"];

/// Kernels with one variant per weight format (`{name}_{format}`).
pub const PER_FORMAT: [&str; 4] = ["embed", "matmul", "moe_gate_up", "moe_down"];

/// Kernels with a single variant.
pub const SINGLE: &[&str] = &[
    "rms_norm",
    "add_rms_norm",
    "qk_norm_rope",
    "kv_store",
    "attention",
    "add",
    "swiglu",
    "moe_route",
    "moe_route_block",
    "moe_group",
    "moe_combine",
    "take_last_rows",
    "sample",
    "fill_random",
    "fill_random_q8_0",
    "fill_random_q4",
];

/// Every kernel name the Rust side launches.
pub fn kernel_names() -> Vec<String> {
    let mut v: Vec<String> = SINGLE.iter().map(|s| s.to_string()).collect();
    for k in PER_FORMAT {
        for f in FORMATS {
            v.push(format!("{k}_{f}"));
        }
    }
    v
}

/// The whole program as NVRTC compiles it; `#line` keeps its messages pointing at the files.
pub fn program_source() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&format!("#line 1 \"{name}\"\n"));
        s.push_str(src);
        s.push('\n');
    }
    s
}

/// Where a context's kernels came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// Compiled by NVRTC in this many seconds (and stored at the path, when the cache took it).
    Compiled {
        seconds: f64,
        stored: Option<std::path::PathBuf>,
    },
    /// Loaded from the disk cache: NVRTC compiled nothing.
    Cached(std::path::PathBuf),
    /// Built by clang++ for the CPU emulator (`UNMASK_CUDA_EMULATOR=1`), this library.
    Emulated(std::path::PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Compiled {
                seconds,
                stored: Some(p),
            } => write!(
                f,
                "compiled by NVRTC in {seconds:.1} s, cached in {}",
                p.display()
            ),
            Origin::Compiled {
                seconds,
                stored: None,
            } => write!(f, "compiled by NVRTC in {seconds:.1} s (not cached)"),
            Origin::Cached(p) => write!(f, "loaded from the cache {}", p.display()),
            Origin::Emulated(p) => write!(f, "run on the CPU emulator ({})", p.display()),
        }
    }
}

/// The compiled kernels of one context.
pub struct Kernels {
    funcs: HashMap<String, CudaFunction>,
    pub origin: Origin,
}

impl Kernels {
    /// A cubin for the device's exact architecture, from the disk cache when an intact entry for
    /// this source, NVRTC and architecture is there, else compiled (and stored).
    pub fn load(ctx: &Arc<CudaContext>, info: &DeviceInfo, tc: &Toolchain) -> Result<Self> {
        let sm = tc.target(info.compute_capability, &info.name)?;
        let src = program_source();
        let options = compile::options(sm);
        let cache = ModuleCache::from_env();
        let key = ModuleCache::key(&src, &options, tc.nvrtc, sm);
        if let Some(cache) = &cache {
            if let Some(image) = cache.load(&key) {
                match Self::from_image(ctx, image) {
                    Ok(funcs) => {
                        return Ok(Kernels {
                            funcs,
                            origin: Origin::Cached(cache.path(&key)),
                        })
                    }
                    // A driver update may refuse an old entry: compile afresh below.
                    Err(e) => {
                        tracing::warn!("cached kernels {key} did not load ({e}); recompiling");
                        cache.forget(&key);
                    }
                }
            }
        }
        let t = Instant::now();
        let image = compile::cubin(&src, "unmask.cu", &options, tc)?;
        let seconds = t.elapsed().as_secs_f64();
        let funcs = Self::from_image(ctx, image.clone())
            .map_err(|e| cuda_error(tc.load_failure(sm, &info.name, e)))?;
        let stored = cache.and_then(|c| match c.store(&key, &image) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(
                    "could not cache the compiled kernels in {}: {e}",
                    c.dir.display()
                );
                None
            }
        });
        Ok(Kernels {
            funcs,
            origin: Origin::Compiled { seconds, stored },
        })
    }

    /// Loads a cubin and looks up every kernel the Rust side launches.
    fn from_image(
        ctx: &Arc<CudaContext>,
        image: Vec<u8>,
    ) -> std::result::Result<HashMap<String, CudaFunction>, String> {
        let module = guarded("loading the compiled kernels", || {
            ctx.load_module(Ptx::from_binary(image))
                .map_err(|e| cuda_error(e.to_string()))
        })
        .map_err(|e| e.to_string())?;
        let mut funcs = HashMap::new();
        for name in kernel_names() {
            let f = module
                .load_function(&name)
                .map_err(|e| format!("kernel `{name}`: {e}"))?;
            funcs.insert(name, f);
        }
        Ok(funcs)
    }

    pub fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| cuda_error(format!("no kernel `{name}`")))
    }
}

/// Source text without comments and string literals (for the structural checks below).
pub fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One kernel file per op family, named as the WGSL backend's shader files are.
    #[test]
    fn every_op_family_has_its_kernel_file() {
        for f in unmask_core::graph::OpFamily::ALL {
            let file = format!("{}.cu", f.file_stem());
            assert!(SOURCES.iter().any(|(n, _)| *n == file), "no {file}");
        }
    }

    /// Names after every `__global__ void` (past an optional `__launch_bounds__(..)`); the
    /// grouped expert kernels stamped out by `MOE_KERNELS` appear as `moe_gate_up_##SUFFIX`.
    fn defined_kernels(src: &str) -> Vec<String> {
        let mut names = Vec::new();
        for part in src.split("__global__ void ").skip(1) {
            let part = match part.strip_prefix("__launch_bounds__(") {
                Some(rest) => rest.split_once(") ").map_or(rest, |(_, r)| r),
                None => part,
            };
            let name: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '#')
                .collect();
            match name.strip_suffix("_##SUFFIX") {
                Some(base) => {
                    for f in FORMATS {
                        let stamp = format!("MOE_KERNELS({f}, ");
                        for _ in 0..src.matches(&stamp).count() {
                            names.push(format!("{base}_{f}"));
                        }
                    }
                }
                None => names.push(name),
            }
        }
        names
    }

    #[test]
    fn every_launched_kernel_is_defined_once() {
        let defined = defined_kernels(&strip_comments(&program_source()));
        for name in kernel_names() {
            let count = defined.iter().filter(|d| **d == name).count();
            assert_eq!(count, 1, "`{name}` defined {count} times");
        }
    }

    #[test]
    fn no_kernel_is_left_out_of_the_list() {
        let names = kernel_names();
        for d in defined_kernels(&strip_comments(&program_source())) {
            assert!(names.contains(&d), "kernel `{d}` is not in kernels.rs");
        }
    }

    #[test]
    fn brackets_balance_in_every_file() {
        for (file, src) in SOURCES {
            let code = strip_comments(src);
            for (open, close) in [('{', '}'), ('(', ')'), ('[', ']')] {
                let mut depth = 0i64;
                for (line, text) in code.lines().enumerate() {
                    for c in text.chars() {
                        if c == open {
                            depth += 1;
                        } else if c == close {
                            depth -= 1;
                        }
                        assert!(depth >= 0, "{file}:{}: unmatched `{close}`", line + 1);
                    }
                }
                assert_eq!(depth, 0, "{file}: unclosed `{open}`");
            }
        }
    }

    #[test]
    fn sources_use_nothing_nvrtc_lacks() {
        for (file, src) in SOURCES {
            let code = strip_comments(src);
            for banned in [
                "#include",
                "INFINITY",
                "FLT_MAX",
                "INT_MAX",
                "size_t",
                "uint32_t",
                "__nv_bfloat16",
                "printf",
            ] {
                assert!(!code.contains(banned), "{file} uses `{banned}`");
            }
        }
    }
}

//! The kernels compile as CUDA C. NVRTC needs a CUDA installation, so this check uses clang's CUDA
//! front end instead (`apt-get install clang-16`), with `tests/clang/nvrtc_shim.h` declaring what
//! NVRTC declares implicitly and nothing more; it generates PTX for sm_80 and finds every kernel
//! the Rust side launches as an entry point. Without clang it reports itself skipped.
//!
//! Where libnvrtc is found (CI installs NVIDIA's `nvidia-cuda-nvrtc-cu12` wheel), the kernels are
//! also compiled by NVRTC itself, as the backend does at load, to a cubin for each GPU
//! generation it serves: NVRTC needs no driver and no GPU.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use unmask_cuda::emulator::clang;

#[test]
fn kernels_compile_to_ptx_with_every_entry_point() {
    let Some(clang) = clang() else {
        // Written past the test harness's capture so that the skip shows in `cargo test`.
        let _ = std::io::stderr().write_all(
            b"cuda kernels: clang check SKIPPED (no clang++; apt-get install clang-16)\n",
        );
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clang");
    let tmp = std::env::temp_dir().join(format!("unmask-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = tmp.join("unmask.cu");
    let ptx = tmp.join("unmask.ptx");
    std::fs::write(&src, unmask_cuda::kernels::program_source()).unwrap();
    let out = Command::new(&clang)
        .args([
            "-x",
            "cuda",
            "--cuda-device-only",
            "-nocudainc",
            "-nocudalib",
        ])
        .args(["--cuda-gpu-arch=sm_80", "-O3", "-std=c++17", "-S"])
        .args(["-Xclang", "-target-feature", "-Xclang", "+ptx70"])
        .args(["-Wall", "-Werror", "-Wno-unknown-cuda-version"])
        .arg("-I")
        .arg(&dir)
        .arg("-include")
        .arg(dir.join("nvrtc_shim.h"))
        .arg("-o")
        .arg(&ptx)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{clang} rejected the kernels:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&ptx).unwrap();
    for name in unmask_cuda::kernels::kernel_names() {
        assert!(
            text.contains(&format!(".entry {name}(")),
            "kernel `{name}` is not an entry point of the compiled PTX"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// NVRTC compiles the program with the backend's own options to a cubin for each of Ampere,
/// Ada, Hopper and Blackwell that this NVRTC knows, and every launched kernel is in it.
/// `UNMASK_REQUIRE_NVRTC=1` (CI) turns a missing libnvrtc into a failure.
#[test]
fn kernels_compile_with_nvrtc_to_a_cubin_per_gpu_generation() {
    if !unmask_cuda::compile::nvrtc_or_skip("cuda kernels: NVRTC check") {
        return;
    }
    let (nvrtc, archs) = unmask_cuda::compile::nvrtc_info().unwrap();
    let tc = unmask_cuda::Toolchain {
        driver: (0, 0),
        nvrtc,
        archs: archs.clone(),
    };
    let src = unmask_cuda::kernels::program_source();
    let wanted = [80, 86, 89, 90, 100, 120];
    let targets: Vec<i32> = wanted.into_iter().filter(|a| archs.contains(a)).collect();
    assert!(
        targets.contains(&80) && targets.contains(&90),
        "NVRTC {nvrtc:?} knows {archs:?}, not sm_80 and sm_90"
    );
    for sm in targets {
        let options = unmask_cuda::compile::options(sm);
        let t = std::time::Instant::now();
        let cubin = unmask_cuda::compile::cubin(&src, "unmask.cu", &options, &tc)
            .unwrap_or_else(|e| panic!("sm_{sm}: {e}"));
        println!(
            "NVRTC {}.{}: sm_{sm} cubin of {} bytes in {:.1} s",
            nvrtc.0,
            nvrtc.1,
            cubin.len(),
            t.elapsed().as_secs_f64()
        );
        assert_eq!(&cubin[..4], b"\x7fELF", "sm_{sm}: not an ELF cubin");
        // The kernels are `extern "C"`: each name is a symbol of the cubin, NUL-terminated.
        for name in unmask_cuda::kernels::kernel_names() {
            let sym = format!("{name}\0");
            assert!(
                cubin.windows(sym.len()).any(|w| w == sym.as_bytes()),
                "sm_{sm}: kernel `{name}` is not in the cubin"
            );
        }
    }
}

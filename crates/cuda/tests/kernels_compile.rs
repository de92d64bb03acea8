//! The kernels compile as CUDA C. NVRTC needs a CUDA installation, so this check uses clang's CUDA
//! front end instead (`apt-get install clang-16`), with `tests/clang/nvrtc_shim.h` declaring what
//! NVRTC declares implicitly and nothing more; it generates PTX for sm_80 and finds every kernel
//! the Rust side launches as an entry point. Without clang it reports itself skipped.

use std::io::Write;
use std::path::Path;
use std::process::Command;

fn clang() -> Option<String> {
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

//! The CUDA kernels executed, on the CPU: the program as the backend puts it together
//! (`kernels::SOURCES` in order), compiled by clang++ as C++ against `emulator/cuda_emu.h` (each
//! block's threads as fibers that switch at barriers and shuffles; `UNMASK_EMULATOR` swaps the
//! two PTX conversions for C++), then `emulator/kernels_test.cpp`'s cases against plain loops
//! written from the layouts in `kernels/common.cuh`. It checks the kernels' arithmetic and
//! indexing where no GPU is, not a GPU's concurrency (no races, memory order or timing). Without
//! clang it reports itself skipped (CI installs clang-16).

use std::io::Write;
use std::path::Path;
use std::process::Command;

mod common;
use common::clang;

/// `extern __shared__ T name[];` (dynamic shared memory, which C++ has no form of) as a pointer
/// to the launch's dynamic shared bytes.
fn dynamic_shared_as_pointer(src: &str) -> String {
    src.lines()
        .map(|line| {
            let Some((indent, rest)) = line.split_once("extern __shared__ ") else {
                return line.to_string();
            };
            let decl = rest.split("[];").next().unwrap();
            let (ty, name) = decl.rsplit_once(' ').unwrap();
            format!("{indent}{ty}* {name} = ({ty}*)emu::dyn_shared;")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kernels_run_on_the_cpu_and_match_plain_loops() {
    let Some(cxx) = clang() else {
        let _ = std::io::stderr().write_all(
            b"cuda kernels: emulated run SKIPPED (no clang++; apt-get install clang-16)\n",
        );
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("emulator");
    let mut src = String::from("#include \"cuda_emu.h\"\n");
    for (name, text) in unmask_cuda::kernels::SOURCES {
        src.push_str(&format!("#line 1 \"{name}\"\n"));
        src.push_str(&dynamic_shared_as_pointer(text));
        src.push('\n');
    }
    src.push_str("#line 1 \"kernels_test.cpp\"\n");
    src.push_str(&std::fs::read_to_string(dir.join("kernels_test.cpp")).unwrap());
    let tmp = std::env::temp_dir().join(format!("unmask-cuda-emu-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (cpp, exe) = (tmp.join("emulated.cpp"), tmp.join("emulated"));
    std::fs::write(&cpp, src).unwrap();
    let built = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-O1",
            "-mf16c",
            "-DUNMASK_EMULATOR",
            "-Wno-unknown-pragmas",
        ])
        .arg("-I")
        .arg(&dir)
        .arg("-o")
        .arg(&exe)
        .arg(&cpp)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{cxx} could not build the emulated kernels:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&ran.stdout);
    println!("{report}");
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        ran.status.success(),
        "emulated kernels disagree with the loops:\n{report}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
}

//! The CUDA kernels executed, on the CPU: the program as the backend puts it together, compiled
//! by clang++ as C++ against `emulator/cuda_emu.h` (`unmask_cuda::emulator`), then
//! `emulator/kernels_test.cpp`'s cases against plain loops written from the layouts in
//! `kernels/common.cuh`. It checks the kernels' arithmetic and indexing where no GPU is, not a
//! GPU's concurrency (no races, memory order or timing). The whole backend runs on the same
//! emulator with `UNMASK_CUDA_EMULATOR=1` (.ci/run). Without clang it reports itself skipped
//! (CI installs clang-16).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use unmask_cuda::emulator;

#[test]
fn kernels_run_on_the_cpu_and_match_plain_loops() {
    let Some(cxx) = emulator::clang() else {
        let _ = std::io::stderr().write_all(
            b"cuda kernels: emulated run SKIPPED (no clang++; apt-get install clang-16)\n",
        );
        return;
    };
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("emulator/kernels_test.cpp");
    let src = emulator::source(&format!(
        "#line 1 \"kernels_test.cpp\"\n{}",
        std::fs::read_to_string(cases).unwrap()
    ));
    let tmp = std::env::temp_dir().join(format!("unmask-cuda-emu-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (cpp, exe) = (tmp.join("emulated.cpp"), tmp.join("emulated"));
    std::fs::write(&cpp, src).unwrap();
    if let Err(e) = emulator::compile(&cxx, &cpp, &exe, &[]) {
        panic!("{e}");
    }
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

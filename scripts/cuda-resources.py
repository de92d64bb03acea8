#!/usr/bin/env python3
"""What each CUDA kernel costs a GPU's multiprocessor, as NVRTC's assembler reports it: registers
per thread, stack and spills, static shared memory; no driver or GPU needed, only libnvrtc.

The program is put together as the backend does (crates/cuda/src/kernels.rs: SOURCES, in order,
each after a #line) and compiled with the backend's options (--gpu-architecture=sm_XY) plus
--ptxas-options=-v. Usage:

    scripts/cuda-resources.py [SM ...]       # default: 90 (H100, H200)

libnvrtc is found by the loader (LD_LIBRARY_PATH), else $UNMASK_NVRTC names the file; NVIDIA's
`nvidia-cuda-nvrtc-cu12` wheel has one (.ci/run installs it in /opt/unmask-nvrtc).
"""
import ctypes
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KERNELS = os.path.join(ROOT, "crates", "cuda", "kernels")


def nvrtc():
    names = [os.environ.get("UNMASK_NVRTC"), "libnvrtc.so", "libnvrtc.so.12", "libnvrtc.so.13"]
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    sys.exit("cuda-resources: libnvrtc not found (set LD_LIBRARY_PATH or UNMASK_NVRTC)")


def program():
    rs = open(os.path.join(ROOT, "crates", "cuda", "src", "kernels.rs")).read()
    names = re.findall(r'\("([\w.]+)", include_str!\("\.\./kernels/', rs)
    return "".join(f'#line 1 "{n}"\n' + open(os.path.join(KERNELS, n)).read() + "\n" for n in names)


def ptxas_log(lib, src, sm):
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"unmask.cu", 0, None, None):
        sys.exit("cuda-resources: nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture=sm_{sm}".encode(), b"--ptxas-options=-v"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    if rc:
        sys.exit(f"cuda-resources: sm_{sm}: NVRTC error {rc}\n{log.value.decode()}")
    return log.value.decode()


def kernels(log):
    """(kernel, registers, stack bytes, spill stores, spill loads, static shared bytes)."""
    rows, cur, frame = [], None, (0, 0, 0)
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            cur, frame = m.group(1), (0, 0, 0)
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            frame = tuple(int(g) for g in m.groups())
        elif (m := re.search(r"Used (\d+) registers", line)) and cur:
            smem = re.search(r"(\d+) bytes smem", line)
            rows.append((cur, int(m.group(1)), *frame, int(smem.group(1)) if smem else 0))
            cur = None
    return rows


def main():
    lib = nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    src = program()
    for sm in sys.argv[1:] or ["90"]:
        rows = kernels(ptxas_log(lib, src, sm))
        print(f"NVRTC {major.value}.{minor.value}, sm_{sm}: {len(rows)} kernels")
        print(f"{'kernel':<20} {'regs':>5} {'stack':>6} {'spill st':>9} {'spill ld':>9} {'smem':>6}")
        for r in sorted(rows, key=lambda r: (-r[1], r[0])):
            print(f"{r[0]:<20} {r[1]:>5} {r[2]:>6} {r[3]:>9} {r[4]:>9} {r[5]:>6}")


if __name__ == "__main__":
    main()

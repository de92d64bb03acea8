#!/usr/bin/env bash
# The CUDA check, on a machine with an NVIDIA GPU (the driver and the CUDA toolkit's NVRTC). It
# needs no Rust toolchain and no network there: it runs what `scripts/gpu-pack.sh` built
# elsewhere (target/gpu-pack, carried to the machine), or builds that pack first where cargo is.
#   1. the test executables with UNMASK_REQUIRE_CUDA=1, so that a missing device fails instead
#      of being skipped, on cuda (and on wgpu too where Vulkan shows a hardware adapter; a
#      software one would take the whole budget): every op case against the reference backend,
#      golden logits and hidden states, every golden generation token-exact, the 300-problem
#      eval, every golden case alone and in batches (batching.rs);
#   2. the kernel cache: a first load compiles, a second compiles nothing;
#   3. `unmask bench` on a LLaDA2.0-mini-shaped model (20 layers, 256 experts, random weights)
#      on cuda in bf16 and q4, batches of 1, 4 and 16 sequences on cuda, and wgpu (Vulkan) in
#      bf16 and q4 (f32 activations, then `--int8-dots`) where that adapter is a hardware one;
#   4. the remaining suites (routing, quantized models, prefix cache, profiles, bad input), as
#      time allows;
#   5. a table last: per-forward time (32-token window), the bandwidth floor, their ratio,
#      tokens/s at 2.55 tokens per forward; then, from `--profile`, each run's op families (ms,
#      GB/s, floor) and its kernels per MoE layer; and which suites failed.
# Everything runs under one budget (GPU_CHECK_BUDGET, 480 s). Output and JSON reports go to
# $OUT (default target/gpu-check; GPU_CHECK_BUNDLE=1 packs them into $OUT/gpu-check.tar.gz).
# On this workplace's device machines: scripts/gpu-pack.sh here, then
#   run(command="GPU_CHECK_BUNDLE=1 scripts/gpu-check.sh", carry=["target/gpu-pack"], timeout_s=560)
# `GPU_CHECK_DRY_RUN=1` runs the same steps on a machine without a GPU (the suites skip cuda, the
# benches are one layer and one timed forward): a check of this script, not of the GPU code.
# Usage: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${GPU_CHECK_BUDGET:-480}
DRY=${GPU_CHECK_DRY_RUN:-0}
OUT=${OUT:-target/gpu-check}
PACK=target/gpu-pack
mkdir -p "$OUT"
start=$SECONDS
# GPU_CHECK_BUNDLE=1: everything under $OUT ends as one gzip'd tar there, whatever the exit (the
# device tool brings back at most 8 files of $OUT).
if [ "${GPU_CHECK_BUNDLE:-0}" = 1 ]; then
    # This script's own output goes in too.
    exec > >(tee "$OUT/gpu-check.log") 2>&1
    bundle() {
        local t rc=0
        t=$(mktemp /tmp/gpu-check.XXXXXX.tar.gz)
        # tar's 1: a file (the log) changed while read; what it read is kept.
        tar -C "$OUT" -czf "$t" . || rc=$?
        if [ "$rc" -le 1 ]; then
            rm -rf "${OUT:?}"/*
            mv "$t" "$OUT/gpu-check.tar.gz"
        fi
    }
    trap bundle EXIT
fi
FAILED=()
left() { echo $((BUDGET - (SECONDS - start))); }
step() { echo; echo "== $* ($(left) s left)"; }
# Runs a command within what is left of the budget; 124 (as timeout says) when nothing is left.
run_limited() {
    local l
    l=$(left)
    if [ "$l" -le 5 ]; then
        echo "gpu-check: out of time (budget ${BUDGET} s) before: $*" >&2
        return 124
    fi
    timeout "$l" "$@"
}

step "GPU"
if [ "$DRY" = 1 ]; then
    echo "dry run: no GPU needed; the suites skip cuda, the benches are cut short"
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); this check needs one" >&2
    exit 1
else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
# NVRTC ships with the CUDA toolkit (or Python's nvidia-cuda-nvrtc), often outside the loader's
# path. cudarc opens `libnvrtc.so` or a CUDA 12 name: a newer toolkit's `libnvrtc.so.13` alone
# gets a `libnvrtc.so` link in /tmp (its directory joins the path too, for nvrtc's builtins).
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so '; then
    NVRTC=$(ls /usr/local/cuda/lib64/libnvrtc.so* /usr/local/cuda-*/lib64/libnvrtc.so* \
        /usr/local/cuda/targets/*/lib/libnvrtc.so* /usr/lib/x86_64-linux-gnu/libnvrtc.so* \
        "$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null \
            || echo /nonexistent)"/nvidia/*/lib/libnvrtc.so* 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$NVRTC" ]; then
        d=$(dirname "$NVRTC")
        if [ ! -e "$d/libnvrtc.so" ]; then
            mkdir -p /tmp/unmask-nvrtc
            ln -sf "$NVRTC" /tmp/unmask-nvrtc/libnvrtc.so
            d="/tmp/unmask-nvrtc:$d"
        fi
        export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "NVRTC: $NVRTC"
    else
        echo "gpu-check: no libnvrtc.so found (the CUDA toolkit's lib64); cuda will say why" >&2
    fi
fi

step "binaries"
if [ ! -f "$PACK/bin.tar.xz" ]; then
    if ! command -v cargo >/dev/null 2>&1; then
        echo "gpu-check: no $PACK here and no cargo to build it: run scripts/gpu-pack.sh where" \
            "cargo is, and bring $PACK along" >&2
        exit 1
    fi
    run_limited scripts/gpu-pack.sh
fi
if ! sha256sum --quiet -c "$PACK/sources.sha256" >/dev/null 2>&1; then
    echo "gpu-check: $PACK was built from other sources than these (changed:" \
        "$(sha256sum --quiet -c "$PACK/sources.sha256" 2>/dev/null | cut -d: -f1 | head -5 | xargs));" \
        "run scripts/gpu-pack.sh again" >&2
    exit 1
fi
BIN=$(mktemp -d /tmp/unmask-gpu-pack.XXXXXX)
# (Python unpacks it: an image without xz still has Python.)
python3 - "$PACK/bin.tar.xz" "$BIN" <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    try:
        t.extractall(sys.argv[2], filter="data")
    except TypeError:  # a Python without extraction filters
        t.extractall(sys.argv[2])
EOF
UNMASK=$BIN/unmask
"$UNMASK" --version
# The test executables find the fixtures under the checkout they were built in (a path compiled
# into them): that path must lead to this tree.
ROOT=$(cat "$PACK/root")
if [ "$(cd "$ROOT" 2>/dev/null && pwd -P)" != "$(pwd -P)" ]; then
    if [ -e "$ROOT" ] || [ -L "$ROOT" ]; then
        echo "gpu-check: the pack was built in $ROOT, which is another tree here" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$ROOT")"
    ln -s "$(pwd -P)" "$ROOT"
    echo "linked $ROOT -> $(pwd -P) (where the test executables look for the fixtures)"
fi

step "Vulkan"
# NVIDIA's Vulkan driver needs the loader (libvulkan.so.1), which a CUDA image may lack: the
# pack's Debian packages, unpacked under /tmp (nothing of the system is replaced).
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' && ls "$PACK"/debs/*.deb >/dev/null 2>&1; then
    GL=/tmp/unmask-gl
    for f in "$PACK"/debs/*.deb; do dpkg -x "$f" "$GL"; done
    export LD_LIBRARY_PATH="$GL/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "Vulkan loader: $GL"
fi
if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 &&
    [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    echo "Vulkan driver: $VK_DRIVER_FILES"
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
WGPU_HW=0
if ADAPTERS=$(WGPU_BACKEND=vulkan run_limited "$UNMASK" devices 2>&1); then
    echo "$ADAPTERS" | grep -E '^cuda|<- --backend wgpu' || true
    if echo "$ADAPTERS" | grep -- '<- --backend wgpu' | grep -qv ', Cpu)'; then WGPU_HW=1; fi
else
    echo "$ADAPTERS" | tail -3
fi
if [ "$WGPU_HW" = 1 ]; then
    export UNMASK_TEST_BACKENDS=cuda,wgpu
else
    echo "(wgpu: no hardware Vulkan adapter; its suites and bench are left out)"
    export UNMASK_TEST_BACKENDS=cuda
fi

# Runs the pack's test executable `name` (in its package's directory, as cargo would), its
# output in $OUT/name.log; a failure is recorded and the check goes on.
suite() {
    local name=$1 dir rc=0
    dir=$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$PACK/tests.tsv")
    step "suite $name"
    (cd "$dir" && run_limited "$BIN/tests/$name" --nocapture) >"$OUT/$name.log" 2>&1 || rc=$?
    grep -E '^test |test result|^cuda|^wgpu|SKIPPED|panicked' "$OUT/$name.log" | tail -40 || true
    if [ "$rc" -ne 0 ]; then
        echo "gpu-check: suite $name failed (exit $rc; log in $OUT/$name.log)" >&2
        FAILED+=("$name")
    fi
}
if [ "$DRY" != 1 ]; then export UNMASK_REQUIRE_CUDA=1; fi
for s in unmask_cuda no_device backend ops golden_forward golden_generate eval_add batching; do
    suite "$s"
done

step "kernel cache"
export UNMASK_CUDA_CACHE="$OUT/kernel-cache"
rm -rf "$UNMASK_CUDA_CACHE"
for i in 1 2; do
    run_limited "$UNMASK" generate --model tests/fixtures/tiny-llada2-add --chat "What is 23+45?" \
        --backend cuda >"$OUT/kernel-cache-$i.out" 2>"$OUT/kernel-cache-$i.log" || true
    grep -h 'cuda kernels' "$OUT/kernel-cache-$i.log" || tail -3 "$OUT/kernel-cache-$i.log"
done
if grep -q 'compiled by NVRTC' "$OUT/kernel-cache-1.log" &&
    grep -q 'loaded from the cache' "$OUT/kernel-cache-2.log"; then
    echo "kernel cache: ok (answer: $(cat "$OUT/kernel-cache-2.out"))"
elif [ "$DRY" != 1 ]; then
    echo "gpu-check: the second load did not use the kernel cache (logs in $OUT)" >&2
    FAILED+=("kernel-cache")
fi

# The mini shape's 20 layers (the window only: no autoregressive baseline, no cacheless step,
# no real runs, whose random weights say nothing); a dry run takes one layer, one forward.
SHAPE=(--shape mini --window 32 --iters 10 --warmup 2)
BATCH=(--layers 4 --iters 5 --warmup 1)
if [ "$DRY" = 1 ]; then
    SHAPE=(--shape mini --layers 1 --window 32 --iters 1 --warmup 0)
    BATCH=(--layers 1 --iters 1 --warmup 0)
fi
bench() { # name backend format [extra bench arguments]
    local name=$1 backend=$2 format=$3
    step "bench $name"
    if run_limited "$UNMASK" bench "${SHAPE[@]}" --format "$format" --backend "$backend" "${@:4}" \
        --skip ar,no-cache,real-run --profile --json >"$OUT/$name.json" 2>"$OUT/$name.log"; then
        tail -2 "$OUT/$name.log"
    else
        echo "($name failed: see $OUT/$name.log)" | tee "$OUT/$name.skipped"
        tail -5 "$OUT/$name.log" >&2
        rm -f "$OUT/$name.json"
    fi
}
bench cuda-bf16 cuda bf16
bench cuda-q4 cuda q4
step "bench cuda-batch (1, 4, 16 sequences)"
if run_limited "$UNMASK" bench --shape mini "${BATCH[@]}" --backend cuda --batch 1,4,16 \
    --window 32 --skip ar,no-cache,real-run --json \
    >"$OUT/cuda-batch.json" 2>"$OUT/cuda-batch.log"; then
    python3 - "$OUT/cuda-batch.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{'seqs':>5} {'ms/forward':>11} {'tok/s/req':>10} {'tok/s total':>12} {'MB/token':>9}")
for b in r.get("batch") or []:
    print(f"{b['sequences']:>5} {b['ms']['median']:>11.3f} {b['tokens_per_second_per_request']:>10.1f} "
          f"{b['tokens_per_second_total']:>12.1f} {b['bytes_per_generated_token'] / 1e6:>9.1f}")
EOF
else
    echo "(cuda-batch failed: see $OUT/cuda-batch.log)"
    tail -5 "$OUT/cuda-batch.log" >&2
fi
if [ "$WGPU_HW" = 1 ] || [ "$DRY" = 1 ]; then
    WGPU_BACKEND=vulkan bench wgpu-bf16 wgpu bf16
    # q4 with f32 activations (the default) and with integer dot products (`--int8-dots`).
    WGPU_BACKEND=vulkan bench wgpu-q4 wgpu q4
    WGPU_BACKEND=vulkan bench wgpu-q4-int8 wgpu q4 --int8-dots
else
    for name in wgpu-bf16 wgpu-q4 wgpu-q4-int8; do
        echo "($name: no hardware Vulkan adapter)" | tee "$OUT/$name.skipped"
    done
fi

for s in golden_routing quant_eval quant_fixture prefix_cache recorded_ahead profile bad_input; do
    suite "$s"
done

step "table"
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d
rows = []
for name in ["cuda-bf16", "cuda-q4", "wgpu-bf16", "wgpu-q4", "wgpu-q4-int8"]:
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        rows.append((name, None))
        continue
    with open(path) as f:
        rows.append((name, json.load(f)))
print(f"{'run':<10} {'backend':<34} {'forward ms':>10} {'floor ms':>9} {'ratio':>6} {'GB/s':>7} {'tok/s @2.55':>11}")
for name, r in rows:
    if r is None:
        print(f"{name:<10} (not run: see {out}/{name}.skipped or .log)")
        continue
    ms = get(r, "forward", "ms", "median")
    floor = get(r, "forward", "floor_ms")
    ratio = get(r, "forward", "ratio_to_floor")
    bw = get(r, "bandwidth", "bytes_per_second")
    tps = get(r, "throughput", "tokens_per_second_assumed")
    be = (get(r, "backend", "name") or "?")[:34]
    f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "?"
    print(f"{name:<10} {be:<34} {f(ms, '10.3f')} {f(floor, '9.3f')} {f(ratio, '6.2f')} "
          f"{f(bw / 1e9 if bw else None, '7.0f')} {f(tps, '11.0f')}")
for name, r in rows:
    p = get(r, "profile") if r else None
    if not p:
        continue
    print(f"\n{name}: {p['kernel_ms']:.3f} ms of kernels, {p['dispatches_per_step']} kernels a step, "
          f"at most {p.get('max_dispatches_per_moe_layer')} in a MoE layer")
    print(f"  {'family':<12} {'n':>5} {'ms':>9} {'share':>6} {'GB/s':>8} {'floor ms':>9}")
    for fam in p["families"]:
        print(f"  {fam['family']:<12} {fam['dispatches']:>5} {fam['ms']:>9.3f} "
              f"{100 * fam['share']:>5.1f}% {fam['gb_per_s']:>8.1f} {fam['floor_ms']:>9.3f}")
    for k in p["kernels"][:8]:
        print(f"    {k['kernel']:<28} {k['dispatches']:>5} {k['ms']:>9.3f}")
EOF
echo "gpu-check: done in $((SECONDS - start)) s"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu-check: FAILED: ${FAILED[*]}" >&2
    exit 1
fi

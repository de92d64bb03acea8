#!/usr/bin/env bash
# The CUDA check, on a machine with an NVIDIA GPU (the driver and the CUDA 12 toolkit's NVRTC):
#   1. builds the CLI and the CUDA test binaries (release);
#   2. runs the CUDA suite with UNMASK_REQUIRE_CUDA=1, so that a missing device fails instead of
#      being skipped: every op case against the reference backend, golden logits and hidden states,
#      every golden generation token-exact, the 300-problem eval, every golden case alone and in
#      batches (batching.rs);
#   3. `unmask bench` on a LLaDA2.0-mini-shaped model (20 layers, 256 experts, random weights)
#      on cuda in bf16 and q4, and on wgpu (Vulkan) in bf16 where this build has that backend;
#   4. prints a table last: per-forward time (32-token window), the bandwidth floor, their ratio,
#      tokens/s at 2.55 tokens per forward; then, from `--profile`, each run's op families (ms,
#      GB/s, floor) and its kernels per MoE layer.
# Between 2 and 3 it checks the kernel cache: a first load compiles, a second compiles nothing.
# Everything runs under one 8-minute budget. Output and JSON reports go to $OUT (default
# target/gpu-check). Usage: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${GPU_CHECK_BUDGET:-480}
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
step() { echo; echo "== $* ($(left) s left)"; }
run_limited() {
    local l
    l=$(left)
    if [ "$l" -le 5 ]; then
        echo "gpu-check: out of time (budget ${BUDGET} s) before: $*" >&2
        exit 1
    fi
    timeout "$l" "$@"
}

step "GPU"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); this check needs one" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# NVRTC ships with the CUDA toolkit, often outside the loader's path.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda/targets/*/lib \
        /usr/lib/x86_64-linux-gnu; do
        if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            echo "NVRTC: $d"
            break
        fi
    done
fi

step "build (release)"
run_limited cargo build --release -p unmask-cli
run_limited cargo test --release -p unmask-cuda -p unmask-tests --no-run 2>&1 | tail -3

step "CUDA suite"
export UNMASK_REQUIRE_CUDA=1
suite() { # log, cargo test arguments...
    local log=$1 rc=0
    shift
    run_limited cargo test --release "$@" -- --nocapture >"$OUT/$log" 2>&1 || rc=$?
    grep -E '^test |test result|^cuda|SKIPPED|seeded sampling|panicked' "$OUT/$log" || true
    if [ "$rc" -ne 0 ]; then
        echo "gpu-check: the CUDA suite failed (exit $rc; log in $OUT/$log)" >&2
        exit 1
    fi
}
suite cuda-tests.log -p unmask-cuda
suite golden-tests.log -p unmask-tests --test ops --test golden_forward --test golden_generate --test eval_add --test batching
unset UNMASK_REQUIRE_CUDA

UNMASK=target/release/unmask
HELP=$($UNMASK bench --help 2>&1 || true)

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
else
    echo "gpu-check: the second load did not use the kernel cache (logs in $OUT)" >&2
fi
PROFILE=""
if grep -q -- '--profile' <<<"$HELP"; then PROFILE="--profile"; fi
bench() { # name backend format
    local name=$1 backend=$2 format=$3
    if ! grep -q -- "$format" <<<"$HELP"; then
        echo "($name: this build's bench has no --format $format)" | tee "$OUT/$name.skipped"
        return 0
    fi
    step "bench $name"
    if run_limited "$UNMASK" bench --shape mini --format "$format" --backend "$backend" \
        --window 32 --iters 10 --warmup 2 --skip ar,no-cache $PROFILE --json \
        >"$OUT/$name.json" 2>"$OUT/$name.log"; then
        tail -2 "$OUT/$name.log"
    else
        echo "($name failed: see $OUT/$name.log)" | tee "$OUT/$name.skipped"
        tail -5 "$OUT/$name.log" >&2
    fi
}
bench cuda-bf16 cuda bf16
bench cuda-q4 cuda q4
if grep -q -- '--batch' <<<"$HELP"; then
    step "bench cuda-batch (1, 4, 16 sequences)"
    if run_limited "$UNMASK" bench --shape mini --layers 4 --backend cuda --batch 1,4,16 \
        --window 32 --iters 5 --warmup 1 --skip ar,no-cache,real-run --json \
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
fi
if grep -q 'wgpu' <<<"$HELP"; then
    WGPU_BACKEND=vulkan bench wgpu-bf16 wgpu bf16
else
    echo "(wgpu: this build has no --backend wgpu)" | tee "$OUT/wgpu-bf16.skipped"
fi

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
for name in ["cuda-bf16", "cuda-q4", "wgpu-bf16"]:
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

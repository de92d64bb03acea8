#!/usr/bin/env bash
# Builds, here, what scripts/gpu-check.sh runs on a GPU machine that has no Rust toolchain and
# no network (the device machines of this workplace: CUDA, PyTorch, no cargo, no registry):
#   target/gpu-pack/bin.tar.xz  the release CLI and the test executables of the CUDA check,
#                               stripped (about 20 MB; the working tree travels too, 64 MiB in all)
#   target/gpu-pack/tests.tsv   per test executable: its name, its package's directory
#   target/gpu-pack/root        this checkout's path: the test executables find the fixtures
#                               through it (compiled in), so gpu-check.sh links it to its tree
#   target/gpu-pack/sources.sha256  the sources they were built from (a stale pack is refused)
#   target/gpu-pack/debs/       the Vulkan loader's packages (where apt can fetch them), which
#                               gpu-check.sh unpacks into /tmp when the machine lacks the loader
# Then, on the device: run `scripts/gpu-check.sh` with `target/gpu-pack` carried. Usage:
#   scripts/gpu-pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=target/gpu-pack
# The test executables the check runs, as (package directory):(test target), in the order
# gpu-check.sh runs them (`unmask_cuda`: the CUDA crate's unit tests).
TESTS="crates/cuda:unmask_cuda crates/cuda:no_device crates/cuda:backend
tests:ops tests:golden_forward tests:golden_generate tests:eval_add tests:batching
tests:golden_routing tests:quant_eval tests:quant_fixture tests:prefix_cache
tests:recorded_ahead tests:profile tests:bad_input"

rm -rf "$PACK"
mkdir -p "$PACK/stage/tests" "$PACK/debs"
cargo build --release -p unmask-cli
cp target/release/unmask "$PACK/stage/unmask"
# Cargo's JSON messages name each test executable with its package and target.
cargo test --release -p unmask-cuda -p unmask-tests --no-run --message-format=json \
    >"$PACK/cargo.json"
python3 - "$PACK" "$TESTS" <<'EOF'
import json, os, shutil, sys
pack, wanted = sys.argv[1], sys.argv[2].split()
root = os.getcwd()
found = {}
for line in open(os.path.join(pack, "cargo.json")):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        pkg = os.path.relpath(os.path.dirname(m["manifest_path"]), root)
        found.setdefault((pkg, m["target"]["name"]), set()).add(m["executable"])
rows = []
for w in wanted:
    pkg, name = w.split(":")
    exes = found.get((pkg, name), set())
    if len(exes) != 1:
        sys.exit(f"gpu-pack: not one test executable for {w} in cargo's output: {sorted(exes)}")
    shutil.copy(exes.pop(), os.path.join(pack, "stage", "tests", name))
    rows.append(f"{name}\t{pkg}")
open(os.path.join(pack, "tests.tsv"), "w").write("\n".join(rows) + "\n")
EOF
strip "$PACK/stage/unmask" "$PACK"/stage/tests/*
XZ_OPT="-9 -T2" tar -C "$PACK/stage" -cJf "$PACK/bin.tar.xz" .
rm -rf "$PACK/stage" "$PACK/cargo.json"
pwd >"$PACK/root"
# The sources the binaries were built from, so that gpu-check.sh refuses a stale pack.
git ls-files -z crates tests/src tests/tests Cargo.toml Cargo.lock | xargs -0 sha256sum >"$PACK/sources.sha256"
# The Vulkan loader and the GL dispatch libraries NVIDIA's Vulkan driver loads (this
# workplace's device notes list them); optional: without them only the wgpu bench is skipped.
if command -v apt-get >/dev/null 2>&1; then
    (cd "$PACK/debs" && apt-get download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 \
        libglx0 libgles2 2>/dev/null) || echo "gpu-pack: no Vulkan loader packages (apt could not fetch them)"
fi
echo "gpu-pack: $(du -sh "$PACK" | cut -f1) in $PACK ($(wc -l <"$PACK/tests.tsv") test executables)"
echo "gpu-pack: working tree $(git ls-files -co --exclude-standard -z | du -ch --files0-from=- 2>/dev/null | tail -1 | cut -f1); both travel (64 MiB in all)"

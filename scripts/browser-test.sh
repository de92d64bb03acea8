#!/usr/bin/env bash
# The golden cases in a real browser: builds the wasm runtime, serves it with MODEL_DIR
# (default: the vendored tests/fixtures/tiny-llada2) on 127.0.0.1, opens tests/browser/golden.html
# in Debian's headless Chromium with WebGPU enabled (SwiftShader here: no shader-f16, 1 GiB
# bindings), runs every case of MODEL_DIR/golden/generate.json through the public JS API in a
# Web Worker, and compares tokens, forward counts and per-forward windows with the goldens.
# Also checks golden/tokenizer.json (if present), a reload served from Cache Storage, and the
# demo's model answering "What is 23+45?" with 68.
#   scripts/browser-test.sh [MODEL_DIR]
# Env: UNMASK_BROWSER_TIMEOUT (seconds, default 600), UNMASK_WEB_NO_BUILD=1 (use target/web/pkg),
#      UNMASK_BROWSER_BACKEND (auto | webgpu | cpu), UNMASK_BROWSER_WEBGPU=0 (Chromium without
#      WebGPU: auto must fall back to the CPU), CHROMIUM (binary, default chromium).
# Exits 0 only if every golden case is exact.
set -euo pipefail
cd "$(dirname "$0")/.."

model="${1:-tests/fixtures/tiny-llada2}"
timeout_s="${UNMASK_BROWSER_TIMEOUT:-600}"
chromium="${CHROMIUM:-chromium}"
[ -f "$model/golden/generate.json" ] || { echo "browser-test: $model/golden/generate.json not found" >&2; exit 2; }
command -v "$chromium" >/dev/null || { echo "browser-test: $chromium not found (apt-get install chromium)" >&2; exit 2; }

[ "${UNMASK_WEB_NO_BUILD:-0}" = 1 ] || scripts/build-web.sh

work=$(mktemp -d)
server_pid="" chrome_pid=""
stop_group() { # $1: the leader of a process group started here with setsid
  [ -n "$1" ] || return 0
  kill -- "-$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 -- "-$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_group "$chrome_pid"
  stop_group "$server_pid"
  rm -rf "$work" || true
  exit "$rc"
}
trap cleanup EXIT

setsid python3 scripts/web_server.py --port 0 --port-file "$work/port" --report "$work/report.json" \
  --mount /test/=tests/browser --mount /unmask/=crates/web/js --mount /unmask/pkg/=target/web/pkg \
  --mount "/model/=$model" --mount /demo-model/=tests/fixtures/tiny-llada2-add \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { echo "browser-test: the test server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
port=$(cat "$work/port")
url="http://127.0.0.1:$port/test/golden.html?model=/model/&demo=/demo-model/&backend=${UNMASK_BROWSER_BACKEND:-auto}"

start=$(date +%s)
webgpu=--enable-unsafe-webgpu
[ "${UNMASK_BROWSER_WEBGPU:-1}" = 0 ] && webgpu=--disable-features=WebGPUService,Vulkan
setsid "$chromium" --headless=new --no-sandbox "$webgpu" --user-data-dir="$work/profile" \
  --disable-background-networking --disable-component-update --disable-sync --no-first-run \
  --disable-quic --enable-logging=stderr "$url" >"$work/chromium.log" 2>&1 &
chrome_pid=$!
while [ ! -s "$work/report.json" ]; do
  if ! kill -0 "$chrome_pid" 2>/dev/null; then
    echo "browser-test: chromium exited before reporting; its log:" >&2; tail -30 "$work/chromium.log" >&2; exit 1
  fi
  if [ $(( $(date +%s) - start )) -ge "$timeout_s" ]; then
    echo "browser-test: no report after ${timeout_s}s; chromium log:" >&2; tail -30 "$work/chromium.log" >&2; exit 1
  fi
  sleep 0.5
done
echo "browser-test: $(( $(date +%s) - start ))s in Chromium ($("$chromium" --version 2>/dev/null | head -1))"

python3 - "$work/report.json" "$model" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
model = sys.argv[2]
if r.get("error"):
    print(f"browser-test: the page failed: {r['error']}")
info = r.get("info") or {}
gpu = info.get("gpu") or {}
if gpu.get("available"):
    adapter = " ".join(x for x in (gpu.get("vendor"), gpu.get("architecture"), gpu.get("description")) if x)
    adapter += f" (shader-f16: {'yes' if gpu.get('shaderF16') else 'no'}, max binding {gpu.get('maxStorageBufferBindingSize', 0) >> 20} MiB)"
else:
    adapter = f"none ({gpu.get('reason', 'unknown')})"
print(f"backend: {info.get('backend', '?')}; WebGPU adapter: {adapter}")
if info.get("fallback"):
    print(f"  (auto fell back to the CPU: {info['fallback']})")
ok = not r.get("error")
tok = r.get("tokenizer")
if tok:
    print(f"tokenizer goldens: {tok['passed']}/{tok['total']}")
    for f in tok["failures"]:
        print(f"  tokenizer mismatch: {json.dumps(f)[:300]}")
    ok &= tok["passed"] == tok["total"]
cases = r.get("cases") or []
exact = 0
for c in cases:
    good = c["tokensExact"] and c["forwardsExact"] and c["traceExact"]
    exact += good
    note = "" if good else (f"  (first token diff at {c['firstDiff']}, forwards {c['forwards']}/{c['expectedForwards']}, "
                            f"first trace diff at forward {c['firstTraceDiff']})")
    print(f"  {'ok  ' if good else 'FAIL'} {c['name']}: {c['tokens']} tokens, {c['forwards']} forwards, "
          f"{c['ms']:.0f} ms, first token {c['firstTokenMs']:.0f} ms{note}")
cn = r.get("cancel")
if cn:
    print(f"cancel: {cn['finish']} after {cn['forwards']} of {cn['full']} forwards ({cn['tokens']} committed tokens kept)")
    ok &= cn["finish"] == "cancelled" and cn["forwards"] < cn["full"]
else:
    ok = False
ld = r.get("info", {})
if ld.get("load"):
    print(f"load: {ld['weight_bytes']} bytes of weights; wasm memory after load "
          f"{ld['load']['wasmMemoryBytes']} bytes ({ld['backend']})")
rl = r.get("reload")
if rl:
    print(f"reload: {rl['cachedFiles']}/{rl['files']} files from Cache Storage, {rl['downloadedBytes']} bytes downloaded, {rl['ms']:.0f} ms")
    ok &= rl["cachedFiles"] == rl["files"] and rl["downloadedBytes"] == 0
d = r.get("demo")
if d:
    s = d["stats"]
    print(f"demo model: 'What is 23+45?' -> {d['text']!r} in {s['ms']:.0f} ms, first token {s['firstTokenMs']:.0f} ms "
          f"({d['backend']})")
    ok &= d["text"] == "68"
else:
    ok = False
print(f"{exact}/{len(cases)} golden cases token-exact in the browser")
sys.exit(0 if ok and cases and exact == len(cases) else 1)
PY

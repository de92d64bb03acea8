#!/usr/bin/env bash
# Builds the browser runtime and serves the demo page on http://127.0.0.1:PORT/ (default 8000).
#   scripts/serve-demo.sh [MODEL_DIR] [--port N] [--no-build]
# The page loads the vendored addition model (models/add/) unless MODEL_DIR is given, which is
# then served as models/custom/ and opened by default. Ctrl-C stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."

port=8000 build=1 model=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) model="$1"; shift ;;
  esac
done

[ "$build" = 1 ] && scripts/build-web.sh
[ -f target/web/pkg/unmask_web_bg.wasm ] || { echo "no build in target/web/pkg: run without --no-build" >&2; exit 1; }

mounts=(--mount /=www --mount /unmask/=crates/web/js --mount /unmask/pkg/=target/web/pkg
        --mount /models/add/=tests/fixtures/tiny-llada2-add --mount /models/tiny/=tests/fixtures/tiny-llada2)
url="http://127.0.0.1:$port/"
if [ -n "$model" ]; then
  [ -f "$model/config.json" ] || { echo "$model: no config.json (not a model directory)" >&2; exit 1; }
  mounts+=(--mount "/models/custom/=$model")
  url="${url}?model=models/custom/"
fi
echo "demo: open $url"
exec python3 scripts/web_server.py --port "$port" "${mounts[@]}"

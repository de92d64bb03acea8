#!/usr/bin/env bash
# Builds the browser runtime: crates/web to wasm32 (profile `wasm`: size-optimised, LTO), then
# wasm-bindgen's JS glue into target/web/pkg, which crates/web/js/worker.js imports as ./pkg/.
# Installs what is missing: the wasm32 rustup target and wasm-bindgen-cli at exactly the
# wasm-bindgen version of Cargo.lock (the CLI refuses a module built by another version).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/web/pkg
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
[ -n "$want" ] || { echo "build-web: wasm-bindgen not found in Cargo.lock" >&2; exit 1; }

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  echo "build-web: installing wasm-bindgen-cli $want (found: ${have:-none})" >&2
  cargo install wasm-bindgen-cli --version "$want"
fi

cargo build --profile wasm --target wasm32-unknown-unknown -p unmask-web
rm -rf "$OUT"
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section --out-dir "$OUT" \
  "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/wasm/unmask_web.wasm"

# No wasm-opt: Debian's binaryen 108 made the module 9 % smaller but its gzip 4 % larger (and took
# over a minute); the gzipped size is what a browser downloads.
wasm="$OUT/unmask_web_bg.wasm"
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
echo "build-web: $wasm: $raw bytes ($((raw / 1024)) KiB), gzip -9 $gz bytes ($((gz / 1024)) KiB)"

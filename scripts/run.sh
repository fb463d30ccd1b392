#!/usr/bin/env bash
# proxdm's main job. With no arguments: make sure a Vulkan driver exists (installs Mesa's
# lavapipe on Debian 12 when there is no GPU), build proxdm, list the adapters and run the GPU
# smoke test. With arguments: build, then run `proxdm ARGS...`.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"   # silences the Vulkan loader's warning
bash scripts/setup.sh
echo "[run] building proxdm (cargo build --release; the first build takes a few minutes)" >&2
cargo build --release --quiet --bin proxdm
if [ "$#" -eq 0 ]; then
  echo "[run] proxdm info" >&2
  ./target/release/proxdm info
  echo "[run] proxdm smoke" >&2
  ./target/release/proxdm smoke
else
  ./target/release/proxdm "$@"
fi

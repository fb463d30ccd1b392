#!/usr/bin/env bash
# proxdm's main job. With no arguments: make sure a Vulkan driver exists (installs Mesa's
# lavapipe on Debian 12 when there is no GPU), build proxdm, list the adapters, run the GPU
# smoke test, then the 2D oracle experiment on a built-in dataset (table and figure in out/).
# With arguments: build, then run `proxdm ARGS...`.
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
  mkdir -p out
  echo "[run] proxdm toy --dataset swissroll (every sampler, 5..40 steps, W1/W2 to the target)" >&2
  ./target/release/proxdm toy --dataset swissroll --out out/toy-swissroll.csv --plot out/toy-swissroll.png
else
  ./target/release/proxdm "$@"
fi

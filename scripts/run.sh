#!/usr/bin/env bash
# proxdm's main job. With no arguments: make sure a Vulkan driver exists (installs Mesa's
# lavapipe on Debian 12 when there is no GPU), build proxdm, list the adapters, sample 64 MNIST
# digits from noise in 10 steps with the shipped ProxDM weights (out/mnist-prox-10steps.png),
# then the 2D oracle experiment (table and figure in out/, the shipped 2D LPN's rows beside the
# oracle's).
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
  mkdir -p out
  echo "[run] proxdm sample: 64 MNIST digits in 10 hybrid ProxDM steps with the shipped weights (about a minute on a CPU)" >&2
  ./target/release/proxdm sample --steps 10 --n 64 --seed 0 --out out/mnist-prox-10steps.png
  echo "[run] proxdm toy --dataset swissroll --prox lpn (every sampler, 5..40 steps, W1/W2 to the target; oracle and learned prox)" >&2
  ./target/release/proxdm toy --dataset swissroll --prox lpn --out out/toy-swissroll.csv --plot out/toy-swissroll.png
else
  ./target/release/proxdm "$@"
fi

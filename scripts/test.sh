#!/usr/bin/env bash
# proxdm's test suite: make sure a Vulkan driver exists (installs Mesa's lavapipe on Debian 12
# when there is no GPU), then run every test: each kernel against its CPU reference, each
# backward against finite differences, shader translation to SPIR-V/MSL/HLSL/GLSL, engine tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
bash scripts/setup.sh
echo "[test] cargo test --release (builds first; a few minutes the first time)" >&2
cargo test --release "$@"

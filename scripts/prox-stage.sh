#!/usr/bin/env bash
# One stage of the shipped MNIST prox weights, as weights/README.md records them: train
# configs/mnist-small-stageN.toml from the shipped file (or resume the stage from its latest
# checkpoint), then evaluate it the way stages 17 on were judged. It never touches weights/:
# a stage ships by hand (cp) when its FD on `--n 2000 --seed 1` beats the shipped file's.
#
#   bash scripts/prox-stage.sh N DATA_DIR [RUNS_DIR]     # RUNS_DIR defaults to ./runs
#
# Safe to run again after an interruption: it resumes a stage that has a checkpoint and skips
# the evaluations already written. Long: about 1.6 h of training and 12 min of evaluation on a
# 2-core CPU; run it under nohup. It runs a copy of the release binary taken when the stage
# starts (RUNS_DIR/proxdm-stageN), so rebuilding the project does not change a running stage.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash scripts/prox-stage.sh N DATA_DIR [RUNS_DIR]" >&2
  exit 2
fi
n="$1"
[ -d "$2" ] || { echo "[stage $1] no data directory $2 (the four MNIST IDX files: see README)" >&2; exit 2; }
data="$(cd "$2" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${3:-$root/runs}"
config="$root/configs/mnist-small-stage$n.toml"
[ -f "$config" ] || { echo "[stage $n] no config $config" >&2; exit 2; }
mkdir -p "$runs"
cd "$runs"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
bin="./proxdm-stage$n"
if [ ! -x "$bin" ]; then
  [ -x "$root/target/release/proxdm" ] || { echo "[stage $n] build first: cargo build --release" >&2; exit 2; }
  cp "$root/target/release/proxdm" "$bin"
fi
out="prox-stage$n"
iters="$(grep -m1 '^iters' "$config" | tr -dc 0-9)"
if [ -f "$out/model.safetensors" ] && [ "$(tail -1 "$out/log.csv" 2>/dev/null | cut -d, -f1)" = "$iters" ]; then
  echo "[stage $n] already trained" >&2
elif [ -f "$out/checkpoint.safetensors" ]; then
  echo "[stage $n] resuming from $out/checkpoint.safetensors" >&2
  "$bin" train --resume --data "$data" --out "$out" --quiet
else
  echo "[stage $n] training from the shipped weights/mnist-prox-small.safetensors" >&2
  cp "$root/weights/mnist-prox-small.safetensors" "start-stage$n.safetensors"
  # A config with more ResBlocks per level than the shipped file starts from it deepened (the
  # new blocks are the identity, so the start computes what the shipped file does).
  want="$(grep -m1 '^num_res_blocks' "$config" | tr -dc 0-9)"
  have="$(head -c 65536 "start-stage$n.safetensors" | grep -ao 'num_res_blocks[^0-9]*[0-9]*' | head -1 | tr -dc 0-9)"
  if [ -n "$want" ] && [ -n "$have" ] && [ "$want" -gt "$have" ]; then
    echo "[stage $n] deepening the start from $have to $want ResBlocks per level" >&2
    "$bin" deepen "start-stage$n.safetensors" --blocks "$want" --seed "$n" --out "start-stage$n-deep.safetensors"
    mv "start-stage$n-deep.safetensors" "start-stage$n.safetensors"
  fi
  "$bin" train --config "$config" --init "start-stage$n.safetensors" --data "$data" --out "$out" --quiet
fi
e=("$bin" eval --data "$data" --classifier "$root/weights/mnist-classifier.safetensors"
   --samplers prox-hybrid --weights "$out/model.safetensors")
[ -f "eval$n-10.csv" ] || "${e[@]}" --steps 10 --n 500 --out "eval$n-10.csv"
[ -f "eval$n-n2000.csv" ] || "${e[@]}" --steps 10 --n 2000 --seed 1 --out "eval$n-n2000.csv"
[ -f "eval$n-5-20.csv" ] || "${e[@]}" --steps 5,20 --n 500 --out "eval$n-5-20.csv"
echo "[stage $n] done at $(date): $runs/eval$n-*.csv; the shipped file's seed-1 row is in weights/README.md" >&2

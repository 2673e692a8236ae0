#!/usr/bin/env bash
# The accelerator check: one script to run on a machine with a GPU (or TPU), ~8 minutes.
# Collects into one JSON file:
#   - experiments/benchmark.py at batch 32, 64 and 256, float32 and bfloat16, with host input
#     and with the input on the devices (input_on_device, steps_per_call 8), seed network;
#   - a 3-epoch run of the default config (python -m facekp_jax.main), its results and wall time;
#   - inference latency / throughput of the trained run (jitted, StableHLO, onnxruntime).
# usage: bash experiments/accelerator_check.sh [--smoke] [OUT.json]   (default accelerator_check.json)
# --smoke runs every step on this machine's CPU with the tiny config and tiny sizes (tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
out=accelerator_check.json
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    *) out=$arg ;;
  esac
done
PY=${PY:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$smoke" = 1 ]; then
  config=configs/tiny.py batches=(8) sizes=(--n 32 --epochs 2) run_epochs=1 calls=3 per_call=2
else
  config=configs/resnet.py batches=(32 64 256) sizes=(--n 1712 --epochs 3) run_epochs=3 calls=50
  per_call=8
fi
batch_flags=()
for b in "${batches[@]}"; do batch_flags+=(--batch "$b"); done
: > "$work/bench.jsonl"
for half in False True; do
  for input in host device; do
    extra=()
    [ "$input" = device ] && extra=(--config.input_on_device=True --config.steps_per_call="$per_call")
    echo "benchmark: half_precision=$half input=$input" >&2
    "$PY" -m experiments.benchmark --config="$config" "${batch_flags[@]}" "${sizes[@]}" \
      --config.half_precision="$half" "${extra[@]}" 2>>"$work/log" \
      | sed "s/^{/{\"input\": \"$input\", /" >> "$work/bench.jsonl"  # half_precision: its own key.
  done
done
echo "default run: $run_epochs epochs" >&2
start=$(date +%s)
"$PY" -m facekp_jax.main --config="$config" --config.num_epochs="$run_epochs" \
  --workdir="$work/run" 2>>"$work/log"
echo "{\"wall_seconds\": $(( $(date +%s) - start ))}" > "$work/run_wall.json"
echo "inference" >&2
"$PY" -m experiments.benchmark --config="$config" --inference --noseed_network \
  --workdir="$work/run" --calls="$calls" 2>>"$work/log" > "$work/inference.jsonl"
"$PY" - "$work" "$out" "$smoke" <<'PYEOF'
import json, os, sys
work, out, smoke = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def lines(name):
  with open(os.path.join(work, name)) as f:
    return [json.loads(l) for l in f if l.strip().startswith("{")]
with open(os.path.join(work, "run", "results.json")) as f:
  run = json.load(f)
with open(os.path.join(work, "run_wall.json")) as f:
  run["command_wall_seconds"] = json.load(f)["wall_seconds"]
report = {"smoke": smoke, "train": lines("bench.jsonl"), "default_run": run,
          "inference": lines("inference.jsonl")}
with open(out, "w") as f:
  json.dump(report, f, indent=2)
print(f"wrote {out}: {len(report['train'])} training benchmarks, "
      f"{len(report['inference'])} inference lines, default run val RMSE "
      f"{run.get('val_rmse', float('nan')):.3f} px in {run['command_wall_seconds']} s")
PYEOF

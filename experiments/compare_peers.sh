#!/usr/bin/env bash
# Alternates the project's benchmark with the seed model in Keras and PyTorch, in one sitting,
# round after round (>= 5 rounds: these shared machines vary by +-30 % between identical runs),
# then prints each system's median and min-max and the project's ratio to each peer, round by
# round and its median (experiments/peer_table.py). Peers live in throw-away venvs outside
# the project:
#   python3 -m venv $PEERS/venv-tf && $PEERS/venv-tf/bin/pip install tensorflow-cpu
#   python3 -m venv $PEERS/venv-torch && $PEERS/venv-torch/bin/pip install torch==2.13.0 numpy
# usage: PEERS=/tmp/peers BENCH=../shared/bench bash experiments/compare_peers.sh [rounds] > out.txt
# Extra benchmark flags for the project (e.g. a config override) go in PROJECT_FLAGS.
set -u
rounds=${1:-5}
PEERS=${PEERS:-/tmp/peers}
BENCH=${BENCH:-../shared/bench}
PY=${PY:-.venv/bin/python}
PROJECT_FLAGS=${PROJECT_FLAGS:-}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
echo "machine: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p') ($(nproc) cores), $(date -u +%F)"
for round in $(seq "$rounds"); do
  for batch in 32 64; do
    # shellcheck disable=SC2086
    echo "round $round batch $batch project $($PY -m experiments.benchmark --batch "$batch" $PROJECT_FLAGS 2>/dev/null | tail -1)" | tee -a "$raw"
    echo "round $round batch $batch $("$PEERS/venv-tf/bin/python" "$BENCH/keras_seed.py" --batch "$batch" 2>/dev/null | tail -1)" | tee -a "$raw"
    echo "round $round batch $batch $("$PEERS/venv-torch/bin/python" "$BENCH/torch_seed.py" --batch "$batch" --channels-last 2>/dev/null | tail -1) (channels-last)" | tee -a "$raw"
  done
done
echo
$PY -m experiments.peer_table "$raw"

#!/usr/bin/env bash
# Alternates the project's benchmark with the seed model in Keras and PyTorch, in one sitting,
# so their images/s compare as ratios. Peers live in throw-away venvs outside the project:
#   python3 -m venv $PEERS/venv-tf && $PEERS/venv-tf/bin/pip install tensorflow-cpu
#   python3 -m venv $PEERS/venv-torch && $PEERS/venv-torch/bin/pip install torch==2.13.0 numpy
# usage: PEERS=/tmp/peers BENCH=../shared/bench bash experiments/compare_peers.sh [rounds] > out.txt
set -u
rounds=${1:-2}
PEERS=${PEERS:-/tmp/peers}
BENCH=${BENCH:-../shared/bench}
PY=${PY:-.venv/bin/python}
for round in $(seq "$rounds"); do
  for batch in 32 64; do
    echo "round $round batch $batch project $($PY experiments/benchmark.py --batch "$batch" 2>/dev/null)"
    echo "round $round batch $batch $("$PEERS/venv-tf/bin/python" "$BENCH/keras_seed.py" --batch "$batch" 2>/dev/null | tail -1)"
    echo "round $round batch $batch $("$PEERS/venv-torch/bin/python" "$BENCH/torch_seed.py" --batch "$batch" --channels-last 2>/dev/null | tail -1) (channels-last)"
  done
done

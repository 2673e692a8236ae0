"""Time to accuracy's PyTorch peer: the seed's network in PyTorch, Keras' recipe, scored per epoch.

Runs in a throw-away PyTorch environment (no JAX, no facekp_jax, no TensorFlow), started by
experiments/time_to_accuracy.py:

  /tmp/peers/venv-torch/bin/python experiments/peer_torch.py --train POOL.csv \
      --val HELDOUT.csv --metrics scores.jsonl --epochs 6 --seed 0 --bench ../shared/bench

The network is ../shared/bench/torch_seed.py's ``SeedResNet`` (imported, not copied) with its
last layer sized to the training columns; the recipe is experiments/parity_keras.py's
(``keras_seed_real.py --linear-head --flip``): the coordinates present in every training row as
outputs (MTFL: 10), mirrored copies with the left/right labels swapped added once, Adam 1e-4,
MSE, batch 32, pixels / 255, shuffled each epoch, channels-last (the faster layout in
experiments/results/speed/peers-2026-12-01.txt). After every epoch the held-out faces are
predicted (eval mode) and one JSON line ``{"epoch", "val_rmse", "seconds"}`` is appended to
``--metrics`` (RMSE in px over the training columns; seconds since this process started).
``load`` and ``flip`` are keras_seed_real.py's, which imports TensorFlow at its top.
"""

import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def load(path):
  """keras_seed_real.load: images (N, 96, 96, 1) / 255, the columns present in every row."""
  d = pd.read_csv(path)
  cols = [c for c in d.columns[:-1] if d[c].notna().all()]
  x = np.stack([np.array(s.split(), np.float32) for s in d.Image]).reshape(-1, 96, 96, 1) / 255.0
  return x, d[cols].to_numpy(np.float32), cols


def flip(x, y, cols):
  """keras_seed_real.flip: mirrored images, x -> 96 - x, left/right columns swapped."""
  x = x[:, :, ::-1]
  y = y.copy()
  y[:, 0::2] = 96.0 - y[:, 0::2]
  swap = {c: c.replace("left", "TMP").replace("right", "left").replace("TMP", "right")
          for c in cols}
  return x, y[:, [cols.index(swap[c]) for c in cols]]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--train", required=True, help="Kaggle-layout training CSV (.csv/.gz)")
  parser.add_argument("--val", required=True, help="held-out CSV scored after every epoch")
  parser.add_argument("--metrics", required=True, help="JSON-lines file of per-epoch scores")
  parser.add_argument("--epochs", type=int, required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--bench", required=True, help="the folder of torch_seed.py")
  args = parser.parse_args(argv)

  sys.path.insert(0, os.path.abspath(args.bench))
  import torch  # pylint: disable=g-import-not-at-top
  import torch_seed  # pylint: disable=g-import-not-at-top

  torch.manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  x, y, cols = load(args.train)
  fx, fy = flip(x, y, cols)
  x, y = np.concatenate([x, fx]), np.concatenate([y, fy])
  xv, yv_all, cols_v = load(args.val)
  yv = yv_all[:, [cols_v.index(c) for c in cols]]
  # NCHW tensors in channels-last memory, as the peer sitting ran it.
  fmt = torch.channels_last
  x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  xv = torch.from_numpy(np.ascontiguousarray(xv.transpose(0, 3, 1, 2))).contiguous(
      memory_format=fmt)
  y = torch.from_numpy(y)
  model = torch_seed.SeedResNet()
  model.head[-1] = torch.nn.Linear(model.head[-1].in_features, len(cols))
  model = model.to(memory_format=fmt)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  loss_fn = torch.nn.MSELoss()
  for epoch in range(1, args.epochs + 1):
    model.train()
    perm = torch.from_numpy(rng.permutation(len(x)))
    for i in range(0, len(x), 32):
      idx = perm[i:i + 32]
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(x[idx].contiguous(memory_format=fmt)), y[idx])
      loss.backward()
      opt.step()
    model.eval()
    with torch.no_grad():
      pred = torch.cat([model(xv[i:i + 256]) for i in range(0, len(xv), 256)]).numpy()
    line = {"epoch": epoch, "val_rmse": float(np.sqrt(np.mean((pred - yv) ** 2))),
            "seconds": time.perf_counter() - T_START}
    with open(args.metrics, "a") as f:
      f.write(json.dumps(line) + "\n")
  print(f"torch seed {args.seed}: {args.epochs} epochs of {len(x)} images, "
        f"{time.perf_counter() - T_START:.0f}s; {torch.get_num_threads()} threads")


if __name__ == "__main__":
  main()

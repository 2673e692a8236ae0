"""The parity harness's Keras arm: the seed's Keras network trained, then predicting face sets.

Runs in a throw-away TensorFlow environment (no JAX, no facekp_jax), started by
experiments/parity.py:

  /tmp/peers/venv-tf/bin/python experiments/parity_keras.py --train POOL.csv --epochs 4 \
      --seed 0 --bench ../shared/bench --predict plain=plain.npz --predict rot+20=rot+20.npz \
      --out predictions.npz

The network, the reader and the flip are ../shared/bench/keras_seed_real.py's own (imported,
not copied), run as `keras_seed_real.py --linear-head --flip`: the coordinates present in every
training row as outputs (MTFL: 10), mirrored copies with the left/right labels swapped added
once (the training set doubles), Adam 1e-4, MSE, batch 32, pixels / 255, shuffled each epoch.
Seeded with tf.keras.utils.set_random_seed. Each --predict file holds ``images`` (N, 96, 96, 1)
in [0, 1]; ``--out`` gets one (N, n_out) prediction array per set name, ``columns`` (the output
columns' names), and the training history and timing in ``meta`` (a JSON string).

For experiments/time_to_accuracy.py, ``--val HELDOUT.csv --metrics FILE.jsonl`` scores the
held-out faces (the training columns, RMSE in px) after every epoch and appends one JSON line
``{"epoch", "val_rmse", "seconds"}`` to FILE (seconds since this process started); ``--out``
is then optional.
"""

import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _set(text):
  name, _, path = text.partition("=")
  if not name or not path:
    raise argparse.ArgumentTypeError(f"--predict wants NAME=PATH.npz, got {text!r}")
  return name, path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--train", required=True, help="Kaggle-layout training CSV (.csv/.gz)")
  parser.add_argument("--epochs", type=int, required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--bench", required=True, help="the folder of keras_seed_real.py")
  parser.add_argument("--predict", type=_set, action="append", default=[], metavar="NAME=NPZ")
  parser.add_argument("--out", help="predictions .npz")
  parser.add_argument("--val", help="held-out CSV scored after every epoch (with --metrics)")
  parser.add_argument("--metrics", help="JSON-lines file of the per-epoch held-out scores")
  args = parser.parse_args(argv)
  if not args.out and not args.metrics or bool(args.val) != bool(args.metrics):
    parser.error("give --out, or --val with --metrics (or all three)")

  sys.path.insert(0, os.path.abspath(args.bench))
  import keras_seed_real  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.keras.utils.set_random_seed(args.seed)
  t0 = time.perf_counter()
  x, y, cols = keras_seed_real.load(args.train)
  fx, fy = keras_seed_real.flip(x, y, cols)
  x, y = np.concatenate([x, fx]), np.concatenate([y, fy])
  del fx, fy
  model = keras_seed_real.build(len(cols), None)  # --linear-head
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss="mse")
  t_fit = time.perf_counter()
  callbacks = []
  if args.val:
    xv, yv_all, cols_v = keras_seed_real.load(args.val)
    yv = yv_all[:, [cols_v.index(c) for c in cols]]

    class Scores(tf.keras.callbacks.Callback):
      """The held-out RMSE (px) after each epoch, one JSON line in --metrics."""

      def on_epoch_end(self, epoch, logs=None):
        pred = self.model.predict(xv, batch_size=256, verbose=0)
        line = {"epoch": epoch + 1, "val_rmse": float(np.sqrt(np.mean((pred - yv) ** 2))),
                "seconds": time.perf_counter() - T_START}
        with open(args.metrics, "a") as f:
          f.write(json.dumps(line) + "\n")

    callbacks.append(Scores())
  history = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=2, shuffle=True,
                      callbacks=callbacks)
  train_seconds = time.perf_counter() - t_fit
  steps = args.epochs * -(-len(x) // 32)
  out = {"columns": np.array(cols)}
  for name, path in args.predict:
    with np.load(path) as f:
      out[name] = model.predict(f["images"], batch_size=256, verbose=0).astype(np.float32)
  meta = {"train_images": int(len(x)), "epochs": args.epochs, "steps": steps,
          "images_seen": int(args.epochs * len(x)), "seed": args.seed,
          "train_loss": [float(v) for v in history.history["loss"]],
          "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t0,
          "tensorflow": tf.__version__}
  out["meta"] = np.array(json.dumps(meta))
  if args.out:
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, args.out)
  print(f"keras seed {args.seed}: {args.epochs} epochs of {len(x)} images, "
        f"{train_seconds:.0f}s; wrote {args.out or args.metrics}")


if __name__ == "__main__":
  main()

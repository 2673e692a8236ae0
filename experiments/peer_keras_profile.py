"""The Keras seed's training step under TensorFlow's profiler: time per op, as JSON.

A peer of experiments/op_profile.py, run in the throw-away TensorFlow venv (TensorFlow is not
a dependency of facekp_jax):

  /tmp/peers/venv-tf/bin/python experiments/peer_keras_profile.py --out ops.json [--batch 32]

Builds ../shared/bench/keras_seed.py's network and names each layer after its kind
(``L02_Conv2D_7x7``, ``L03_BatchNormalization``, ...) so that every op says whose it is; trains
``--warmup`` steps of random faces (Adam 1e-4, MSE, as the bench), times ``--timed`` steps
without the profiler, then runs ``--steps`` steps under ``tf.profiler``. Writes {"steps",
"step_ms" (the unprofiled median), "tensorflow", "ops": [{"name", "type", "us", "calls"}]}: every
kernel the executor ran (the ``tf_Compute`` threads' events), its microseconds summed over the
profiled steps.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402


def build(bench: str):
  """The bench's seed network, its layers named ``L<index>_<kind>[_<k>x<k>]``."""
  sys.path.insert(0, bench)
  import keras_seed  # noqa: PLC0415  # ../shared/bench, on the path only here.
  model = keras_seed.build()
  for i, layer in enumerate(model.layers):
    kernel = getattr(layer, "kernel_size", None)
    suffix = f"_{kernel[0]}x{kernel[1]}" if kernel else ""
    layer.name = f"L{i:02d}_{type(layer).__name__}{suffix}"
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss="mse")
  return model


def kernel_events(logdir: str) -> list[dict]:
  """Per op (name "scope/...:Type"), its summed microseconds and calls, from the profile."""
  (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  ops: dict[str, dict] = {}
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        meta = plane.event_metadata[event.metadata_id]
        if not meta.display_name or ":" not in meta.name:
          continue  # The executor's own spans, not a kernel.
        op = ops.setdefault(meta.name, {"name": meta.name, "type": meta.display_name,
                                        "us": 0.0, "calls": 0})
        op["us"] += event.duration_ps / 1e6
        op["calls"] += 1
  return sorted(ops.values(), key=lambda o: -o["us"])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--bench", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                  "shared", "bench"))
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--warmup", type=int, default=5)
  ap.add_argument("--timed", type=int, default=20)
  ap.add_argument("--steps", type=int, default=10)
  a = ap.parse_args()
  model = build(a.bench)
  rng = np.random.default_rng(0)
  n = a.batch * max(a.warmup, a.timed, a.steps)
  x = rng.random((n, 96, 96, 1), dtype=np.float32)
  y = rng.random((n, 30), dtype=np.float32) * 96
  model.fit(x[:a.batch * a.warmup], y[:a.batch * a.warmup], batch_size=a.batch, epochs=1,
            verbose=0, shuffle=False)
  times = []
  for i in range(a.timed):
    xb, yb = x[i * a.batch:(i + 1) * a.batch], y[i * a.batch:(i + 1) * a.batch]
    t0 = time.perf_counter()
    model.train_on_batch(xb, yb)
    times.append(time.perf_counter() - t0)
  with tempfile.TemporaryDirectory() as logdir:
    tf.profiler.experimental.start(logdir)
    model.fit(x[:a.batch * a.steps], y[:a.batch * a.steps], batch_size=a.batch, epochs=1,
              verbose=0, shuffle=False)
    tf.profiler.experimental.stop()
    ops = kernel_events(logdir)
  with open(a.out, "w") as f:
    json.dump({"steps": a.steps, "step_ms": 1e3 * statistics.median(times),
               "tensorflow": tf.__version__, "ops": ops}, f)


if __name__ == "__main__":
  main()

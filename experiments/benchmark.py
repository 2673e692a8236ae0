"""Training and inference throughput of the seed model, comparable with ../shared/bench/.

Protocol (as in ../shared/bench/keras_seed.py and torch_seed.py): steady-state
training epochs over 1712 random 96x96x1 images (80 % of Kaggle's 2140 complete
rows), Adam, MSE; images/s of the fastest epoch after the first. The epoch runs
the project's real training path: the seeded batch iterator with augmentation,
host -> device transfer, and the jitted, donated ``train_step``.

  python experiments/benchmark.py --batch 32 --batch 64
  python experiments/benchmark.py --batch 32 --config.model.fast_ops=False
  python experiments/benchmark.py --batch 32 --config.input_on_device=True --config.steps_per_call=8

Prints one JSON line per batch size: device kind and count, jax version, batch,
train_images_per_s, compile_s, infer_images_per_s, input_images_per_s (the
augmentation + batching pipeline alone), peak_host_mem_mb.
"""

import json
import resource
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from facekp_jax import data, device_input, sharding, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/resnet.py", "Model and recipe to time.")
flags.DEFINE_multi_integer("batch", [32], "Global batch sizes to time.")
flags.DEFINE_integer("n", 1712, "Images per epoch.")
flags.DEFINE_integer("epochs", 3, "Epochs per batch size (the first one is warm-up).")
flags.DEFINE_bool("seed_network", True, "Time the seed's network (dense regression head, "
                  "18,007,710 parameters), as ../shared/bench does; --noseed_network times the "
                  "config's own model.head.")


def _faces(n: int) -> data.Faces:
  rng = np.random.default_rng(0)
  return data.Faces(rng.random((n, 96, 96, 1), dtype=np.float32),
                    (rng.random((n, 30), dtype=np.float32) * 96).astype(np.float32),
                    np.ones((n, 30), np.float32))


def _epoch(trainer, state, faces, dataset, epoch):
  t0 = time.perf_counter()
  *_, (_, _, state, metrics) = train.epoch_steps(trainer, state, faces, dataset, epoch, 0)
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - t0


def time_batch(config, batch_size: int, n: int, epochs: int) -> dict:
  config = config.copy_and_resolve_references()
  config.batch_size = batch_size
  if FLAGS.seed_network:
    config.model.head = "regression"
  mesh = sharding.make_mesh()
  faces = _faces(n)
  steps = n // batch_size
  trainer = train.Trainer(config, mesh)
  state = trainer.init_state()

  on_device = bool(config.get("input_on_device", False))
  dataset = device_input.upload(faces, mesh) if on_device else None
  t0 = time.perf_counter()
  _, k, state, m = next(train.epoch_steps(trainer, state, faces, dataset, 0, 0))
  jax.block_until_ready(m)
  first_call = time.perf_counter() - t0

  times = []
  for epoch in range(epochs):
    state, seconds = _epoch(trainer, state, faces, dataset, epoch)
    times.append(seconds)
  steady = min(times[1:]) if len(times) > 1 else times[0]
  compile_s = max(0.0, first_call - k * steady / steps)

  trainer.predict(state, faces.images[:trainer.eval_batch_size])  # Compile.
  t0 = time.perf_counter()
  trainer.predict(state, faces.images)
  infer = n / (time.perf_counter() - t0)

  t0 = time.perf_counter()
  for epoch in range(3):
    for _ in train.epoch_batches(faces, config, epoch):
      pass
  pipeline = 3 * steps * batch_size / (time.perf_counter() - t0)

  d = jax.devices()[0]
  return {
      "device_kind": d.device_kind, "platform": d.platform, "device_count": jax.device_count(),
      "jax": jax.__version__, "batch": batch_size, "n": n, "head": config.model.head,
      "fast_ops": bool(config.model.fast_ops), "half_precision": bool(config.half_precision),
      "input_on_device": on_device, "steps_per_call": int(config.get("steps_per_call", 1)),
      "train_images_per_s": round(steps * batch_size / steady, 1),
      "epoch_seconds": [round(t, 2) for t in times], "compile_s": round(compile_s, 2),
      "infer_images_per_s": round(infer, 1), "input_images_per_s": round(pipeline, 1),
      "peak_host_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }


def main(argv):
  del argv
  for batch in FLAGS.batch:
    print(json.dumps(time_batch(FLAGS.config, batch, FLAGS.n, FLAGS.epochs)), flush=True)


if __name__ == "__main__":
  sys.path.insert(0, ".")
  app.run(main)

"""Training and inference throughput of the seed model, comparable with ../shared/bench/; and
inference latency of the model and its exported artefacts (``--inference``).

Protocol (as in ../shared/bench/keras_seed.py and torch_seed.py): steady-state
training epochs over 1712 random 96x96x1 images (80 % of Kaggle's 2140 complete
rows), Adam, MSE; images/s of the fastest epoch after the first. The epoch runs
the project's real training path: the seeded batch iterator with augmentation,
host -> device transfer, and the jitted, donated ``train_step``.

  python -m experiments.benchmark --batch 32 --batch 64
  python -m experiments.benchmark --batch 32 --config.model.fast_ops=False
  python -m experiments.benchmark --batch 32 --config.input_on_device=True --config.steps_per_call=8

Prints one JSON line per batch size: device kind and count, jax version, batch,
train_images_per_s, compile_s, infer_images_per_s, input_images_per_s (the
augmentation + batching pipeline alone), peak_host_mem_mb.

  python -m experiments.benchmark --inference --noseed_network [--workdir=W]

``--inference`` times prediction instead, from a host array of 96x96 faces to host keypoints,
for three runtimes: the jitted model (``model.apply.Inference``, the package's own path),
the StableHLO artefact (``jax.export.deserialize(...).call``) and the ONNX artefact in
onnxruntime (both from ``facekp_jax.serving.export``, uint8 input). One JSON line each: latency
at batch 1 (median and 90th percentile of ``--calls`` calls, ms) and throughput at batch 64
(images/s, the median call). The weights are the config's initial ones, or a trained
workdir's with ``--workdir`` (timing does not depend on them).
"""

import json
import os
import resource
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from facekp_jax import cli
from facekp_jax.core import faces as faces_lib
from facekp_jax.core import host_memory, keypoints, sharding
from facekp_jax.data import on_device
from facekp_jax.serving import export, predictor
from facekp_jax.training import loop, steps
from facekp_jax.training import state as state_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/resnet.py", "Model and recipe to time.")
flags.DEFINE_multi_integer("batch", [32], "Global batch sizes to time.")
flags.DEFINE_integer("n", 1712, "Images per epoch.")
flags.DEFINE_integer("epochs", 3, "Epochs per batch size (the first one is warm-up).")
flags.DEFINE_bool("seed_network", True, "Time the seed's network (dense regression head, "
                  "18,007,710 parameters), as ../shared/bench does; --noseed_network times the "
                  "config's own model.head.")
flags.DEFINE_bool("inference", False, "Time inference: the jitted model, StableHLO, onnxruntime.")
flags.DEFINE_string("workdir", None, "--inference: time this trained workdir's best checkpoint.")
flags.DEFINE_integer("calls", 50, "--inference: timed calls per batch size.")


def _faces(n: int) -> faces_lib.Faces:
  rng = np.random.default_rng(0)
  return faces_lib.Faces(rng.random((n, 96, 96, 1), dtype=np.float32),
                    (rng.random((n, 30), dtype=np.float32) * 96).astype(np.float32),
                    np.ones((n, 30), np.float32))


def _epoch(trainer, state, faces, dataset, epoch):
  t0 = time.perf_counter()
  steps_per_epoch = len(faces) // trainer.config.batch_size
  *_, (_, _, state, metrics, _) = loop.train_calls(trainer, state, faces, dataset,
                                                    epoch * steps_per_epoch,
                                                    (epoch + 1) * steps_per_epoch)
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - t0


def time_batch(config, batch_size: int, n: int, epochs: int) -> dict:
  config = config.copy_and_resolve_references()
  config.batch_size = batch_size
  if FLAGS.seed_network:  # The benches' network and loss (../shared/bench: Adam, MSE).
    config.model.head, config.loss = "regression", "mse"
  mesh = sharding.make_mesh()
  faces = _faces(n)
  n_steps = n // batch_size
  trainer = steps.Trainer(config, mesh)
  state = trainer.init_state()

  input_on_device = config.input_on_device
  dataset = on_device.upload(faces, mesh) if input_on_device else None
  t0 = time.perf_counter()
  _, k, state, m, _ = next(loop.train_calls(trainer, state, faces, dataset, 0, n_steps))
  jax.block_until_ready(m)
  first_call = time.perf_counter() - t0

  times = []
  for epoch in range(epochs):
    state, seconds = _epoch(trainer, state, faces, dataset, epoch)
    times.append(seconds)
  steady = min(times[1:]) if len(times) > 1 else times[0]
  compile_s = max(0.0, first_call - k * steady / n_steps)

  trainer.predict(state, faces.images[:trainer.inference.eval_batch_size])  # Compile.
  t0 = time.perf_counter()
  trainer.predict(state, faces.images)
  infer = n / (time.perf_counter() - t0)

  t0 = time.perf_counter()
  for epoch in range(3):
    for _ in loop.epoch_batches(faces, config, epoch):
      pass
  pipeline = 3 * n_steps * batch_size / (time.perf_counter() - t0)

  d = jax.devices()[0]
  return {
      "device_kind": d.device_kind, "platform": d.platform, "device_count": jax.device_count(),
      "jax": jax.__version__, "batch": batch_size, "n": n, "head": config.model.head,
      "fast_ops": bool(config.model.fast_ops), "half_precision": bool(config.half_precision),
      "input_on_device": input_on_device, "steps_per_call": int(config.get("steps_per_call", 1)),
      "train_images_per_s": round(n_steps * batch_size / steady, 1),
      "epoch_seconds": [round(t, 2) for t in times], "compile_s": round(compile_s, 2),
      "infer_images_per_s": round(infer, 1), "input_images_per_s": round(pipeline, 1),
      "peak_host_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }


def _timings(run, images: np.ndarray, calls: int) -> list[float]:
  """Seconds per call of ``run(images)`` after two warm-up calls (compilation, caches)."""
  for _ in range(2):
    run(images)
  out = []
  for _ in range(calls):
    t0 = time.perf_counter()
    run(images)
    out.append(time.perf_counter() - t0)
  return out


def _inference_model(config) -> predictor.Predictor:
  if FLAGS.workdir:
    return predictor.load(FLAGS.workdir)
  config = config.copy_and_resolve_references()
  if FLAGS.seed_network:
    config.model.head = "regression"
  trainer = steps.Trainer(config, sharding.make_mesh())
  return predictor.Predictor("", config, state_lib.inference_variables(trainer.init_state()),
                             trainer.inference, 0, "initial",
                             np.ones(keypoints.KAGGLE.num_coords, np.float32))


def time_inference(config, calls: int) -> list[dict]:
  """One record per runtime: latency at batch 1, throughput at batch 64."""
  model = _inference_model(config)
  faces = (np.random.default_rng(0).random((64, 96, 96)) * 255).astype(np.uint8)
  variables, mesh = model.variables, model.inference.mesh

  def jitted(x):
    images = (x.astype(np.float32) / np.float32(255.0))[..., None]
    return np.asarray(model.inference.jitted(variables, sharding.to_global(images, mesh)))

  runtimes = {"jax.jit": jitted}
  with tempfile.TemporaryDirectory() as folder:
    for fmt in export.FORMATS:
      path = os.path.join(folder, f"model.{fmt}")
      export.export(model, fmt, path)
      with open(path, "rb") as f:
        blob = f.read()
      if fmt == "stablehlo":
        call = jax.export.deserialize(bytearray(blob)).call
        runtimes["stablehlo"] = lambda x, call=call: np.asarray(call(x))
      else:
        import onnxruntime  # noqa: PLC0415  # The [export] extra.
        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        runtimes[f"onnxruntime {onnxruntime.__version__}"] = (
            lambda x, s=session: s.run(None, {"faces": x})[0])
  d = jax.devices()[0]
  records = []
  for name, run in runtimes.items():
    one = np.array(_timings(run, faces[:1], calls)) * 1e3
    many = np.array(_timings(run, faces, max(3, calls // 5)))
    records.append({
        "runtime": name, "device_kind": d.device_kind, "platform": d.platform,
        "jax": jax.__version__, "head": model.config.model.head,
        "weights": FLAGS.workdir or "initial",
        "latency_ms_batch1": round(float(np.median(one)), 2),
        "latency_ms_batch1_p90": round(float(np.percentile(one, 90)), 2),
        "throughput_images_per_s_batch64": round(64 / float(np.median(many)), 1)})
  return records


def main(argv):
  del argv
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (core/host_memory.py).
  if FLAGS.inference:
    cli.quiet_libraries()
    for record in time_inference(FLAGS.config, FLAGS.calls):
      print(json.dumps(record), flush=True)
    return
  for batch in FLAGS.batch:
    print(json.dumps(time_batch(FLAGS.config, batch, FLAGS.n, FLAGS.epochs)), flush=True)


if __name__ == "__main__":
  app.run(main)

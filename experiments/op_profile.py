"""Per-op time of the seed network's training step: facekp_jax (XLA:CPU) against Keras.

  python -m experiments.op_profile                    # both; experiments/results/op_profile/
  python -m experiments.op_profile --systems=jax --set=model.fast_ops=False --out_dir=/tmp/p

Each system trains the seed's network (the dense regression head, 18 M parameters; Adam, MSE,
no EMA, a constant rate, as ../shared/bench times it) at ``--batch`` on random faces:
``--warmup`` steps, ``--timed`` steps timed without a profiler (the step's wall ms, median),
then ``--steps`` steps under the system's profiler:

- ``jax``: ``jax.profiler.trace``; every event named after an instruction of the compiled step
  (an XLA:CPU thunk: a fusion, a dot, a convolution, a copy) is an op, and the instruction's
  ``op_name`` metadata says which module and pass it belongs to (the optimizer's update and the
  EMA carry ``jax.named_scope``'s names, training/steps.py);
- ``keras``: ``experiments/peer_keras_profile.py`` under ``--keras_python`` (TensorFlow's
  profiler; every kernel the executor ran, its layer in its scope name).

Every op goes into one ``CLASSES`` entry by the layer it belongs to, and one pass (forward,
backward, update). Ops may overlap in time (both runtimes run independent ops on several
threads), so an op's ms per step is its own duration and the sum can exceed the step's wall.
Writes ``--out_dir``/table.md: per class the ms per step of both systems and their ratio, then
the ten costliest ops of each; and ops-<system>.json, every op (not kept in git: thousands of
TensorFlow kernels).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import subprocess
import tempfile
import time

import jax
import numpy as np
from absl import flags

from configs import resnet
from experiments import ablate, time_to_accuracy
from facekp_jax import cli
from facekp_jax.core import host_memory, sharding
from facekp_jax.core.faces import Faces
from facekp_jax.training import loop, steps

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "op_profile")
SYSTEMS = ("jax", "keras")
CLASSES = ("stem conv 7x7", "conv 1x1", "conv 3x3", "batch norm", "dense", "pooling",
           "relu, add, dropout", "optimizer (Adam)", "loss and other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\"")
_KERAS_LAYER = re.compile(r"L\d\d_([A-Za-z0-9]+?)(?:_(\d+)x(\d+))?(?:_\d+)?/")


def instruction_ops(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its ``op_name`` metadata, for every instruction of a compiled module."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def module_kinds(params) -> dict[str, str]:
  """"parent/module" path of each parameterised module -> its class (conv kxk, dense, norm)."""
  out = {}
  for path, leaves in _modules(params):
    kernel = leaves.get("kernel")
    if kernel is not None and kernel.ndim == 4:
      kh, kw = kernel.shape[:2]
      kind = "stem conv 7x7" if (kh, kw) == (7, 7) else f"conv {kh}x{kw}"
    elif kernel is not None and kernel.ndim == 2:
      kind = "dense"
    elif "scale" in leaves:
      kind = "batch norm"
    else:
      continue
    out[path] = kind
  return out


def _modules(tree, prefix=""):
  leaves = {k: v for k, v in tree.items() if not isinstance(v, dict)}
  if leaves:
    yield prefix, leaves
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _modules(v, f"{prefix}/{k}" if prefix else k)


def jax_class(op_name: str, kinds: dict[str, str]) -> tuple[str, str]:
  """(class, pass) of a compiled instruction, from its ``op_name``."""
  parts = op_name.split("/")
  if "optimizer" in parts or "ema" in parts:
    return "optimizer (Adam)", "update"
  stage = "backward" if "transpose(" in op_name else "forward"
  if "(ResNet)" not in op_name:
    return "loss and other", stage
  for i in range(len(parts) - 1):  # The deepest parameterised module named in the path.
    for j in range(len(parts), i, -1):
      kind = kinds.get("/".join(parts[i:j]))
      if kind:
        return kind, stage
  if "pool" in op_name or "reduce_window" in op_name:
    return "pooling", stage
  return "relu, add, dropout", stage


def keras_class(name: str) -> tuple[str, str]:
  """(class, pass) of a TensorFlow kernel from its scope name (peer_keras_profile's layers)."""
  stage = "backward" if "gradient_tape" in name else "forward"
  if name.split("/")[0].startswith("adam") or "/adam/" in name or name.startswith("Adam"):
    return "optimizer (Adam)", "update"
  m = _KERAS_LAYER.search(name)
  if not m:
    return "loss and other", stage
  kind, kh, kw = m.groups()
  if kind == "Conv2D":
    return ("stem conv 7x7" if kh == "7" else f"conv {kh}x{kw}"), stage
  return {"BatchNormalization": "batch norm", "Dense": "dense", "MaxPooling2D": "pooling",
          "AveragePooling2D": "pooling"}.get(kind, "relu, add, dropout"), stage


def profile_jax(config, batch: int, warmup: int, timed: int, profiled: int) -> dict:
  """The seed network's step in facekp_jax: wall ms per step and every op's time."""
  config = config.copy_and_resolve_references()
  # The benches' step: constant Adam 1e-4 on the mean squared error.
  for path, value in ablate.STUDY_PINNED.items():
    ablate.set_field(config, path, value)
  config.batch_size, config.model.head, config.ema_decay = batch, "regression", 0.0
  mesh = sharding.make_mesh()
  n = batch * max(warmup, timed, profiled)
  rng = np.random.default_rng(0)  # Random faces and labels, as ../shared/bench times.
  faces = Faces(rng.random((n, 96, 96, 1), dtype=np.float32),
                rng.random((n, 30), dtype=np.float32) * 96, np.ones((n, 30), np.float32))
  trainer = steps.Trainer(config, mesh)
  state = trainer.init_state()
  n //= batch

  def run(state, count):
    done = 0
    while done < count:
      k = min(count - done, n)
      *_, (_, _, state, metrics, _) = loop.train_calls(trainer, state, faces, None, 0, k)
      jax.block_until_ready(metrics)
      done += k
    return state

  state = run(state, warmup)
  times = []
  for _ in range(timed):
    t0 = time.perf_counter()
    state = run(state, 1)
    times.append(time.perf_counter() - t0)
  local = {"images": faces.images[:batch], "targets": faces.targets[:batch],
           "mask": faces.mask[:batch]}
  names = instruction_ops(trainer.train_step.lower(
      state, sharding.to_global(local, mesh)).compile().as_text())
  kinds = module_kinds(jax.device_get(state.params))
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      state = run(state, profiled)
    (trace,) = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  ops: dict[str, dict] = {}
  for e in events:
    if e.get("ph") != "X" or e["name"] not in names:
      continue
    op = ops.setdefault(e["name"], {"name": e["name"], "op_name": names[e["name"]],
                                    "us": 0.0, "calls": 0})
    op["us"] += e.get("dur", 0.0)
    op["calls"] += 1
  for op in ops.values():
    op["class"], op["pass"] = jax_class(op["op_name"], kinds)
  return {"steps": profiled, "step_ms": 1e3 * statistics.median(times), "jax": jax.__version__,
          "ops": sorted(ops.values(), key=lambda o: -o["us"])}


def profile_keras(batch: int, warmup: int, timed: int, profiled: int, python: str) -> dict:
  """The Keras seed's step (experiments/peer_keras_profile.py in the TensorFlow venv)."""
  with tempfile.TemporaryDirectory() as scratch:
    out = os.path.join(scratch, "ops.json")
    subprocess.run([python, os.path.join(HERE, "peer_keras_profile.py"), "--out", out,
                    "--batch", str(batch), "--warmup", str(warmup), "--timed", str(timed),
                    "--steps", str(profiled)], check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
      record = json.load(f)
  for op in record["ops"]:
    op["class"], op["pass"] = keras_class(op["name"])
  return record


def _op_label(op: dict) -> str:
  """An op as the table names it: the XLA instruction or TensorFlow kernel, then its scope."""
  if "op_name" in op:  # XLA
    return f"`{op['name']}` {op['op_name'].removeprefix('jit(train_step)/')}"
  scope = op["name"].rsplit(":", 1)[0].removeprefix("StatefulPartitionedCall/")
  return f"`{op['type']}` {scope}"


def table(records: dict[str, dict], batch: int) -> str:
  """table.md: per class ms per step by system (and ratio), then each system's top ten ops."""
  per_class = {s: collections.Counter() for s in records}
  for s, r in records.items():
    for op in r["ops"]:
      per_class[s][op["class"]] += op["us"] / 1e3 / r["steps"]
  systems = list(records)
  lines = [f"# Per-op time of the seed network's training step (batch {batch})", "",
           f"- machine: {time_to_accuracy.machine()}; command: `python -m experiments.op_profile`",
           "- ms per step: an op's own duration summed over the profiled steps / steps; ops "
           "overlap on the cores, so a column's sum can exceed the step's wall", "",
           "| class | " + " | ".join(f"{s} ms/step" for s in systems)
           + (" | jax / keras |" if len(systems) == 2 else " |"),
           "|---|" + "---|" * (len(systems) + (len(systems) == 2))]
  for c in CLASSES:
    row = [f"{per_class[s][c]:.1f}" for s in systems]
    if len(systems) == 2:
      k = per_class["keras"][c]
      row.append(f"{per_class['jax'][c] / k:.2f}" if k else "—")
    lines.append(f"| {c} | " + " | ".join(row) + " |")
  lines.append("| **sum of ops** | " + " | ".join(
      f"{sum(per_class[s].values()):.1f}" for s in systems) + (" | |" if len(systems) == 2
                                                             else " |"))
  lines.append("| **step wall (unprofiled median)** | " + " | ".join(
      f"{records[s]['step_ms']:.1f}" for s in systems) + (
          f" | {records['jax']['step_ms'] / records['keras']['step_ms']:.2f} |"
          if len(systems) == 2 else " |"))
  for s in systems:
    r = records[s]
    lines += ["", f"## {s}: the ten costliest ops", "",
              "| op | class | pass | ms/step | share of the ops |", "|---|---|---|---|---|"]
    total = sum(op["us"] for op in r["ops"]) or 1.0
    for op in r["ops"][:10]:
      lines.append(f"| {_op_label(op)} | {op['class']} | "
                   f"{op['pass']} | {op['us'] / 1e3 / r['steps']:.1f} | "
                   f"{100 * op['us'] / total:.1f} % |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  fv = cli.command_flags()
  flags.DEFINE_list("systems", list(SYSTEMS), f"of {list(SYSTEMS)}", flag_values=fv)
  flags.DEFINE_integer("batch", 32, "faces per step", flag_values=fv)
  flags.DEFINE_integer("warmup", 5, "steps before timing (compilation, caches)", flag_values=fv)
  flags.DEFINE_integer("timed", 20, "steps timed without a profiler", flag_values=fv)
  flags.DEFINE_integer("steps", 10, "steps profiled", flag_values=fv)
  flags.DEFINE_multi_string("set", [], "a JAX config override FIELD=VALUE (repeatable; the "
                            "head, EMA and schedule are the seed's whatever it says)",
                            flag_values=fv)
  flags.DEFINE_string("keras_python", time_to_accuracy.PEER_VENV["keras"],
                      "Python of a TensorFlow venv", flag_values=fv)
  flags.DEFINE_string("out_dir", DEFAULT_OUT, "ops-<system>.json, table.md", flag_values=fv)
  cli.parse(fv, "python -m experiments.op_profile", __doc__, argv)
  if not fv.systems or set(fv.systems) - set(SYSTEMS):
    cli.usage_error(f"--systems must be a list of {list(SYSTEMS)}")
  if min(fv.batch, fv.warmup, fv.timed, fv.steps) < 1:
    cli.usage_error("--batch, --warmup, --timed and --steps must be >= 1")
  if "keras" in fv.systems and not os.path.isfile(fv.keras_python):
    cli.fail(f"{fv.keras_python}: no Python for the keras peer; make its throw-away venv "
             "(python -m experiments.time_to_accuracy --help shows how) or name it with "
             "--keras_python")
  config = resnet.get_config()
  try:
    for path, value in (ablate.parse_setting(s) for s in fv.set):
      ablate.set_field(config, path, value)
  except ValueError as e:
    cli.usage_error(e)
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (core/host_memory.py).
  cli.quiet_libraries()
  os.makedirs(fv.out_dir, exist_ok=True)
  records = {}
  for system in fv.systems:
    if system == "jax":
      records[system] = profile_jax(config, fv.batch, fv.warmup, fv.timed, fv.steps)
    else:
      records[system] = profile_keras(fv.batch, fv.warmup, fv.timed, fv.steps, fv.keras_python)
    with open(os.path.join(fv.out_dir, f"ops-{system}.json"), "w") as f:
      json.dump(records[system], f, indent=1)
  text = table(records, fv.batch)
  with open(os.path.join(fv.out_dir, "table.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()

"""Time to accuracy: wall seconds from the training command to a validation RMSE below a bar.

What a user feels: ``python -m facekp_jax.main`` is started as they would start it (process
start, data, compilation and every epoch counted), its metrics.jsonl is watched, and the
first epoch whose validation RMSE drops below ``--threshold`` px stops the clock; the run is
then stopped (SIGTERM: it checkpoints and exits). One JSON line per model:

  python -m experiments.time_to_accuracy                  # the default config, then the seed's network
  python -m experiments.time_to_accuracy --model=default --threshold=2.0
  python -m experiments.time_to_accuracy --set=input_on_device=True --set=steps_per_call=8

The data are the built-in faces (configs/resnet.py's default ``data.train_csv``) unless a
``--set=data.train_csv=...`` says otherwise; ``seed`` is the seed's dense regression network
(``model.head=regression``), ``default`` the config's own head. A model that does not reach the
bar within ``--max_epochs`` says so (``"reached": false``, its best RMSE and the seconds spent).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

from absl import flags

from facekp_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"default": [], "seed": ["--config.model.head=regression"]}


def machine() -> str:
  """The CPU's model name and core count (what the seconds depend on)."""
  try:
    with open("/proc/cpuinfo") as f:
      name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
  except OSError:
    name = None
  return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _records(path: str) -> list[dict]:
  """The whole lines of a metrics.jsonl that is being written."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")[:-1]  # The last piece may be a line still being written.
  return [json.loads(line) for line in lines if line]


def time_to_accuracy(config: str, model: str, threshold: float, max_epochs: int,
                     settings: list[str], workdir: str, poll_s: float = 0.2) -> dict:
  """Runs one training until its validation RMSE < ``threshold``; returns the JSON record."""
  command = [sys.executable, "-m", "facekp_jax.main", f"--config={config}",
             f"--workdir={workdir}", f"--config.num_epochs={max_epochs}", *MODELS[model],
             *[f"--config.{s}" for s in settings]]
  metrics = os.path.join(workdir, "metrics.jsonl")
  t0 = time.perf_counter()
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  hit, records = None, []
  while hit is None and proc.poll() is None:
    time.sleep(poll_s)
    records = _records(metrics)
    hit = next((r for r in records if r.get("val_rmse", float("inf")) < threshold), None)
  seconds = time.perf_counter() - t0
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)  # Reached: the run checkpoints and stops.
  _, err = proc.communicate()
  records = _records(metrics)
  hit = hit or next((r for r in records if r.get("val_rmse", float("inf")) < threshold), None)
  if hit is None and proc.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): "
                       f"{err.strip().splitlines()[-1] if err.strip() else ''}")
  best = min((r["val_rmse"] for r in records if "val_rmse" in r), default=None)
  return {"model": model, "config": config, "settings": settings, "threshold_px": threshold,
          "reached": hit is not None, "seconds": round(seconds, 1),
          "epoch": (hit or (records[-1] if records else {})).get("epoch"),
          "val_rmse": round(hit["val_rmse"], 3) if hit else None,
          "best_val_rmse": None if best is None else round(best, 3),
          "max_epochs": max_epochs, "machine": machine()}


def main(argv=None) -> None:
  fv = cli.command_flags()
  flags.DEFINE_string("config", "configs/resnet.py", "the config file both models start from",
                      flag_values=fv)
  flags.DEFINE_multi_enum("model", list(MODELS), list(MODELS), "default: the config's head; "
                          "seed: the seed's dense regression network", flag_values=fv)
  flags.DEFINE_float("threshold", 2.5, "validation RMSE to reach, px", flag_values=fv)
  flags.DEFINE_integer("max_epochs", 50, "give up after this many epochs", flag_values=fv)
  flags.DEFINE_multi_string("set", [], "a config override FIELD=VALUE (repeatable)",
                            flag_values=fv)
  cli.parse(fv, "python -m experiments.time_to_accuracy", __doc__, argv)
  if fv.threshold <= 0 or fv.max_epochs < 1:
    cli.usage_error("--threshold must be > 0 and --max_epochs >= 1")
  for model in fv.model:
    with tempfile.TemporaryDirectory() as workdir:
      try:
        record = time_to_accuracy(fv.config, model, fv.threshold, fv.max_epochs, fv.set,
                                  workdir)
      except RuntimeError as e:
        cli.fail(e)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()

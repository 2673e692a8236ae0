"""The README's main job, timed: wall seconds from its command's start to its end, and its result.

  python -m experiments.main_job                       # 5 rounds: before, cold cache, warm cache
  python -m experiments.main_job --rounds=3 --arms=cold,warm --seeds=0,1

Each round runs every arm once, in turn (arms alternate, so a busy spell of the machine falls on
all of them), each a fresh ``python -m facekp_jax.main --config=configs/resnet.py`` process
with its own workdir, timed from the process's start to its exit (imports, data, compilation,
every epoch, the final test-time-augmented evaluation and the plots). The arms (``ARMS``):

- ``before``: the main job before issue 27 (50 epochs of constant Adam 1e-4 at batch 32, MSE), with
  no persistent compilation cache;
- ``cold``: today's command with an empty compilation cache (a first run on a machine);
- ``warm``: today's command again, finding the programs that ``cold`` compiled in the cache
  (every later run of the same model).

One JSON line per run (arm, seed, round, wall seconds, the validation RMSE and NME with TTA
from its results.json) on stdout and in ``--out`` (a JSON-lines file, appended), then per arm
and seed the median and range of the wall seconds and the RMSE (which a seed fixes: the runs are
deterministic). ``--seeds`` repeats the rounds per seed (each seed's validation split differs).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from experiments import time_to_accuracy
from experiments.studies import STUDY_PINNED
from facekp_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = [sys.executable, "-m", "facekp_jax.main", "--config=configs/resnet.py"]
# The main job before issue 27: 50 epochs of its recipe (the one every study ran), and no
# persistent compilation cache.
BEFORE = ["--config.num_epochs=50", *(f"--config.{k}={v}" for k, v in STUDY_PINNED.items())]
ARMS = {"before": BEFORE, "cold": [], "warm": []}


def run_once(arm: str, seed: int, cache: str, scratch: str) -> dict:
  """One main job of ``arm`` at ``seed`` (``cache``: its compilation cache folder); its record."""
  workdir = tempfile.mkdtemp(prefix=f"{arm}-s{seed}-", dir=scratch)
  if arm == "cold":
    shutil.rmtree(cache, ignore_errors=True)  # An empty cache: a first run.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR="" if arm == "before" else cache)
  command = [*COMMAND, *ARMS[arm], f"--config.seed={seed}", f"--workdir={workdir}"]
  t0 = time.perf_counter()
  proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True, check=False)
  seconds = time.perf_counter() - t0
  if proc.returncode:
    last = proc.stderr.strip().splitlines()[-1:] or [""]
    raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): {last[0]}")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  shutil.rmtree(workdir)
  return {"arm": arm, "seed": seed, "wall_seconds": round(seconds, 1),
          "val_rmse": round(results["val_rmse"], 4), "val_nme": round(results["val_nme"], 5),
          "epochs": results["epochs"], "steps": results["steps"],
          "overrides": ARMS[arm], "machine": time_to_accuracy.machine(),
          "date": time.strftime("%Y-%m-%d")}


def summary(records: list[dict]) -> str:
  """A markdown table: per arm and seed, runs, median and range of wall seconds, RMSE, NME."""
  lines = ["| arm | seed | runs | wall s: median (min-max) | val RMSE px (TTA) | NME |",
           "|---|---|---|---|---|---|"]
  groups: dict = {}
  for r in records:
    groups.setdefault((r["arm"], r["seed"]), []).append(r)
  for (arm, seed), runs in groups.items():
    walls = [r["wall_seconds"] for r in runs]
    rmse = sorted({r["val_rmse"] for r in runs})
    nme = sorted({r["val_nme"] for r in runs})
    lines.append(f"| {arm} | {seed} | {len(runs)} | {statistics.median(walls):.0f} "
                 f"({min(walls):.0f}-{max(walls):.0f}) | "
                 f"{', '.join(f'{v:.3f}' for v in rmse)} | {', '.join(f'{v:.4f}' for v in nme)} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  fv = cli.command_flags()
  flags.DEFINE_integer("rounds", 5, "rounds; each runs every arm once, in turn", flag_values=fv)
  flags.DEFINE_list("arms", list(ARMS), f"of {list(ARMS)}, in each round's order",
                    flag_values=fv)
  flags.DEFINE_list("seeds", ["0"], "config seeds; each gets its own rounds", flag_values=fv)
  flags.DEFINE_string("out", None, "a JSON-lines file the records are appended to",
                      flag_values=fv)
  cli.parse(fv, "python -m experiments.main_job", __doc__, argv)
  if fv.rounds < 1 or not fv.arms or set(fv.arms) - set(ARMS):
    cli.usage_error(f"--rounds must be >= 1 and --arms a list of {list(ARMS)}")
  if "warm" in fv.arms and "cold" not in fv.arms:
    cli.usage_error("--arms=warm needs cold before it in each round (it fills the cache)")
  try:
    seeds = [int(s) for s in fv.seeds]
  except ValueError:
    cli.usage_error(f"--seeds: whole numbers, got {fv.seeds}")
  records = []
  with tempfile.TemporaryDirectory(prefix="main_job-") as scratch:
    cache = os.path.join(scratch, "jax_cache")
    for seed in seeds:
      for rnd in range(1, fv.rounds + 1):
        for arm in fv.arms:
          try:
            record = dict(run_once(arm, seed, cache, scratch), round=rnd)
          except RuntimeError as e:
            cli.fail(e)
          records.append(record)
          print(json.dumps(record), flush=True)
          if fv.out:
            with open(fv.out, "a") as f:
              f.write(json.dumps(record) + "\n")
  print(summary(records))


if __name__ == "__main__":
  main()

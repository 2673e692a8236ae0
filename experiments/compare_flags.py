"""XLA flag sets against the default one: experiments/benchmark.py alternated, round by round.

Each round runs the benchmark once per arm, in turn, each in a fresh process with that arm's
``XLA_FLAGS`` (XLA reads them once, at start); the arms' order rotates from round to round so
that none always runs first. Prints each arm's train images/s per batch size (median and
min-max over the rounds) and its ratio to the ``default`` arm of the same round, and their
median (experiments/peer_table.py's table): on these shared machines (+-30 % between
identical runs) only same-round ratios compare. An arm whose process fails (a flag this
jaxlib does not know) is reported, not timed.

  python -m experiments.compare_flags --rounds=5
  python -m experiments.compare_flags --rounds=5 --arm=onednn=--xla_cpu_use_onednn=true
  python -m experiments.compare_flags --arms=default,vector512 --benchmark_flag=--noseed_network
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from experiments import peer_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CPU leads of jaxlib 0.10's XLA:CPU (its DebugOptions). Convolutions and dots already
# run in YNNPACK there (fusion kinds individual_convolution, individual_dot); its other kinds
# also pull the elementwise ops and reductions around them into YNNPACK's fusions; without
# YNNPACK they are Eigen's; 512-bit vectors on AVX-512 for XLA's own loops. (The oneDNN flags,
# what the Keras and PyTorch builds use on x86, parse but compile the very same program in the
# PyPI jaxlib, which has no oneDNN inside, and --xla_cpu_use_multi_output_fusion is unknown.)
_YNN = "--xla_cpu_experimental_ynn_fusion_type="
ARMS = {
    "default": "",
    "ynn-off": _YNN,
    "ynn-eltwise": _YNN + "individual_dot,individual_convolution,eltwise",
    "ynn-all": _YNN + "dot,eltwise,reduce,individual_dot,individual_convolution",
    "vector512": "--xla_cpu_prefer_vector_width=512",
}

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 5, "Rounds; each runs every arm once.")
flags.DEFINE_multi_integer("batch", [32, 64], "Batch sizes (one benchmark process per arm).")
flags.DEFINE_list("arms", list(ARMS), f"Arms to run, of {sorted(ARMS)} and any --arm.")
flags.DEFINE_multi_string("arm", [], "An extra arm, NAME=XLA_FLAGS (e.g. "
                          "fast=--xla_cpu_enable_fast_math=true).")
flags.DEFINE_multi_string("benchmark_flag", [], "Passed to experiments.benchmark as they are.")


def _run(xla_flags: str, batches, extra) -> dict | str:
  """{batch: images/s} of one benchmark process, or the reason it gave none."""
  env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                          xla_flags])))
  cmd = [sys.executable, "-m", "experiments.benchmark", *extra,
         *[f"--batch={b}" for b in batches]]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  out = {}
  for line in proc.stdout.splitlines():
    try:
      record = json.loads(line)
      out[int(record["batch"])] = float(record["train_images_per_s"])
    except (ValueError, KeyError, TypeError):
      continue
  if proc.returncode or not out:
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return f"exit {proc.returncode}: {tail[:200]}"
  return out


def table(runs: dict) -> dict:
  """{batch: {arm: {round: images/s}}}, peer_table's layout, from {arm: {round: {batch: ...}}}."""
  out: dict = {}
  for arm, rounds in runs.items():
    for rnd, by_batch in rounds.items():
      for batch, value in by_batch.items():
        out.setdefault(batch, {}).setdefault(arm, {})[rnd] = value
  return out


def markdown(runs: dict) -> str:
  """Medians, ranges and each arm's ratio to the default of the same round (peer_table's)."""
  summary = peer_table.summarise(table(runs), reference="default", per_reference=False)
  return peer_table.markdown(summary, ratio="arm / default")


def main(argv):
  del argv
  arms = dict(ARMS)
  for spec in FLAGS.arm:
    name, sep, value = spec.partition("=")
    if not sep or not name:
      raise app.UsageError(f"--arm={spec}: expected NAME=XLA_FLAGS")
    arms[name] = value
    if name not in FLAGS.arms:
      FLAGS.arms.append(name)
  unknown = [a for a in FLAGS.arms if a not in arms]
  if unknown:
    raise app.UsageError(f"--arms: unknown {unknown}; known: {sorted(arms)}")
  order = ["default"] + [a for a in FLAGS.arms if a != "default"]
  runs = {a: {} for a in order}
  for rnd in range(1, FLAGS.rounds + 1):
    shift = (rnd - 1) % len(order)
    for arm in order[shift:] + order[:shift]:
      result = _run(arms[arm], FLAGS.batch, FLAGS.benchmark_flag)
      print(json.dumps({"round": rnd, "arm": arm, "xla_flags": arms[arm],
                        "train_images_per_s": result}), flush=True)
      if isinstance(result, dict):
        runs[arm][rnd] = result
  print(markdown(runs))


if __name__ == "__main__":
  app.run(main)

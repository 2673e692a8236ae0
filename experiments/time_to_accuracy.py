"""Time to accuracy: wall seconds from a training's start to a held-out RMSE under a bar, by system.

What a user waits for when choosing between this project and the seed's Keras or PyTorch
network: a model good enough. Each run is started as its user would start it (process start,
imports, data, compilation and every epoch counted; no compilation cache for JAX), its
per-epoch scores of the same held-out faces are watched as they are written, and the first
score at or under each ``--threshold`` stops that threshold's clock:

  python -m experiments.time_to_accuracy                    # MTFL: default, keras, torch; 3 rounds
  python -m experiments.time_to_accuracy --rounds=5 --systems=default,keras
  python -m experiments.time_to_accuracy --data=synthetic --systems=default,seed --threshold=2.5

Data: ``ablate.heldout_files``' seeded 80/20 split of ``--data`` (``mtfl``:
../shared/data/mtfl_train.csv.gz, 6120 training and 1530 held-out faces, the split the parity
harness and the held-out studies score on; ``synthetic``: the built-in faces). Every system
trains on the training faces and scores the held-out faces (their present coordinates, RMSE in
px of the 96x96 image) after every epoch. Systems (``SYSTEMS``):

- ``default``: ``python -m facekp_jax.main --config=configs/resnet.py`` as it is (its own
  epochs and schedule), validating on the held-out file (``data.val_csv``; per epoch: the EMA
  weights, no TTA);
- ``seed``: the same with the seed's dense regression head (``model.head=regression``);
- ``keras``: the Keras seed as the parity harness runs it (``experiments/parity_keras.py``:
  ../shared/bench/keras_seed_real.py ``--linear-head --flip``, Adam 1e-4, batch 32) under
  ``--keras_python``, for ``--peer_epochs`` epochs of the faces and their mirrors;
- ``torch``: the seed's network in PyTorch with the same recipe (``experiments/peer_torch.py``)
  under ``--torch_python``, as long.

Each round runs every system once, in turn (systems alternate, so a busy spell of the machine
falls on all of them), all at the round's seed (round r: seed r - 1). A run stops when it has
passed every threshold, or at the end of its budget. One JSON line per run is appended to
``--out_dir``/runs.jsonl (system, round, seed, per threshold the seconds and epoch of the first
score under it or null, the whole curve of (seconds, epoch, RMSE)); a run already there is
skipped, so a stopped sitting resumes. After every run ``table.md`` (per system and threshold:
median and range of the seconds over the rounds that reached it; the project's ratio to each
peer, median of the rounds' ratios) and ``curves.png`` (held-out RMSE against wall seconds) are
rewritten.

The peers' environments (throw-away; neither is a dependency of facekp_jax):
  python3 -m venv /tmp/peers/venv-tf && /tmp/peers/venv-tf/bin/pip install tensorflow-cpu pandas
  python3 -m venv /tmp/peers/venv-torch && /tmp/peers/venv-torch/bin/pip install torch numpy pandas
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from configs import resnet
from experiments import ablate
from facekp_jax import cli
from facekp_jax.core import files, plots

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = os.path.join(ROOT, "..", "shared", "bench")
DEFAULT_OUT = os.path.join(HERE, "results", "time_to_accuracy")
JAX_SYSTEMS = {"default": [], "seed": ["--config.model.head=regression"]}
PEER_SYSTEMS = {"keras": os.path.join(HERE, "parity_keras.py"),
                "torch": os.path.join(HERE, "peer_torch.py")}
SYSTEMS = (*JAX_SYSTEMS, *PEER_SYSTEMS)
PEER_VENV = {"keras": "/tmp/peers/venv-tf/bin/python", "torch": "/tmp/peers/venv-torch/bin/python"}


def machine() -> str:
  """The CPU's model name and core count (what the seconds depend on)."""
  try:
    with open("/proc/cpuinfo") as f:
      name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
  except OSError:
    name = None
  return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _records(path: str) -> list[dict]:
  """The whole lines of a JSON-lines file that is being written."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")[:-1]  # The last piece may be a line still being written.
  return [json.loads(line) for line in lines if line]


def first_hits(curve: list[list[float]], thresholds: list[float]) -> dict[str, dict | None]:
  """Per threshold (its text), the first point of ``curve`` ((seconds, epoch, RMSE) in time
  order) at or under it, as {"seconds", "epoch", "val_rmse"}; None where none is."""
  out = {}
  for t in thresholds:
    hit = next((p for p in curve if p[2] <= t), None)
    out[f"{t:g}"] = None if hit is None else {"seconds": hit[0], "epoch": hit[1],
                                              "val_rmse": hit[2]}
  return out


def command(system: str, seed: int, pool: str, held: str, workdir: str, args) -> tuple:
  """(argv, env, the JSON-lines file its per-epoch scores go to) of one run of ``system``."""
  if system in JAX_SYSTEMS:
    argv = [sys.executable, "-m", "facekp_jax.main", f"--config={args.config}",
            f"--workdir={workdir}", f"--config.seed={seed}", f"--config.data.train_csv={pool}",
            f"--config.data.val_csv={held}", "--config.data.val_fraction=0",
            *JAX_SYSTEMS[system], *[f"--config.{s}" for s in args.set]]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR="")  # A first run: it compiles.
    return argv, env, os.path.join(workdir, "metrics.jsonl")
  metrics = os.path.join(workdir, "scores.jsonl")
  python = args.keras_python if system == "keras" else args.torch_python
  argv = [python, PEER_SYSTEMS[system], "--train", pool, "--val", held, "--metrics", metrics,
          "--epochs", str(args.peer_epochs), "--seed", str(seed), "--bench", args.bench]
  return argv, dict(os.environ), metrics


def run_once(system: str, rnd: int, pool: str, held: str, args, scratch: str,
             poll_s: float = 0.2) -> dict:
  """One run of ``system`` in round ``rnd``, watched until it passes every threshold or ends."""
  seed = rnd - 1
  workdir = tempfile.mkdtemp(prefix=f"{system}-r{rnd}-", dir=scratch)
  argv, env, metrics = command(system, seed, pool, held, workdir, args)
  lowest = min(args.threshold)
  curve = []

  def take_new_scores(seconds: float) -> None:  # Scores written since the last look, timed now.
    scores = [r for r in _records(metrics) if "val_rmse" in r]
    curve.extend([round(seconds, 1), r["epoch"], round(r["val_rmse"], 4)]
                 for r in scores[len(curve):])

  t0 = time.perf_counter()
  proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  while proc.poll() is None and not (curve and curve[-1][2] <= lowest):
    time.sleep(poll_s)
    take_new_scores(time.perf_counter() - t0)
  seconds = time.perf_counter() - t0
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)  # Every bar passed: stop (JAX checkpoints and exits).
  _, err = proc.communicate()
  take_new_scores(seconds)
  if proc.returncode not in (0, -signal.SIGTERM) and not (curve and curve[-1][2] <= lowest):
    last = err.strip().splitlines()[-1:] or [""]
    raise RuntimeError(f"{system} (round {rnd}) failed ({proc.returncode}): {last[0]}")
  return {"system": system, "round": rnd, "seed": seed, "data": args.data,
          "thresholds": first_hits(curve, args.threshold), "curve": curve,
          "wall_seconds": round(seconds, 1),
          "budget_epochs": args.peer_epochs if system in PEER_SYSTEMS else None,
          "settings": args.set if system in JAX_SYSTEMS else [], "machine": machine(),
          "date": time.strftime("%Y-%m-%d")}


def _median_range(values: list[float]) -> str:
  if not values:
    return "never"
  return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def summary(records: list[dict], thresholds: list[float]) -> str:
  """The table: per system and threshold, runs that reached it, median (range) of seconds and
  epoch; then the project's (``default``) ratio to each peer, the median of the rounds' own."""
  systems = [s for s in SYSTEMS if any(r["system"] == s for r in records)]
  keys = [f"{t:g}" for t in thresholds]
  head = "| system | runs | " + " | ".join(
      f"to {k} px: s median (range) | epoch" for k in keys) + " | best RMSE px (median) |"
  lines = [head, "|" + "---|" * (3 + 2 * len(keys))]
  for s in systems:
    runs = [r for r in records if r["system"] == s]
    cells = []
    for k in keys:
      hits = [r["thresholds"][k] for r in runs if r["thresholds"].get(k)]
      reached = f" ({len(hits)}/{len(runs)} reached)" if len(hits) < len(runs) else ""
      cells += [_median_range([h["seconds"] for h in hits]) + reached,
                ", ".join(str(h["epoch"]) for h in hits) or "—"]
    best = statistics.median(min(p[2] for p in r["curve"]) for r in runs if r["curve"])
    lines.append(f"| {s} | {len(runs)} | " + " | ".join(cells) + f" | {best:.3f} |")
  ratios = []
  for peer in (s for s in systems if s in PEER_SYSTEMS):
    for k in keys:
      by_round = []
      for r in (r for r in records if r["system"] == "default"):
        other = next((o for o in records if o["system"] == peer and o["round"] == r["round"]),
                     None)
        if other and r["thresholds"].get(k) and other["thresholds"].get(k):
          by_round.append(other["thresholds"][k]["seconds"] / r["thresholds"][k]["seconds"])
      if by_round:
        ratios.append(f"- to {k} px: default is **{statistics.median(by_round):.1f}x** faster "
                      f"than {peer} (rounds: {', '.join(f'{v:.1f}' for v in by_round)})")
  return "\n".join(lines + ([""] + ratios if ratios else []))


def plot(records: list[dict], thresholds: list[float], path: str) -> None:
  """Held-out RMSE against wall seconds, one colour per system, one line per round."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colours = dict(zip(SYSTEMS, ("tab:blue", "tab:green", "tab:red", "tab:orange")))
  for s in SYSTEMS:
    for i, r in enumerate(r for r in records if r["system"] == s and r["curve"]):
      seconds, _, rmse = zip(*r["curve"])
      ax.plot(seconds, rmse, "o-", ms=3, lw=1, color=colours[s], alpha=0.8,
              label=s if i == 0 else None)
  for t in thresholds:
    ax.axhline(t, color="grey", ls="--", lw=0.8)
  ax.set(xlabel="wall seconds from the command's start", ylabel="held-out RMSE (px)",
         yscale="log", title="time to accuracy (dashed: thresholds)")
  ax.legend()
  plots.save_figure(fig, path)


def main(argv=None) -> None:
  fv = cli.command_flags()
  flags.DEFINE_enum("data", "mtfl", ["mtfl", "synthetic"], "the faces split 80/20",
                    flag_values=fv)
  flags.DEFINE_list("systems", ["default", "keras", "torch"], f"of {list(SYSTEMS)}, in each "
                    "round's order", flag_values=fv)
  flags.DEFINE_integer("rounds", 3, "rounds; round r runs every system at seed r - 1",
                       flag_values=fv)
  flags.DEFINE_multi_float("threshold", [3.44, 2.5], "held-out RMSE bars, px (3.44: the Keras "
                           "seed's final RMSE at the parity budget)", flag_values=fv)
  flags.DEFINE_string("config", "configs/resnet.py", "the JAX systems' config file",
                      flag_values=fv)
  flags.DEFINE_multi_string("set", [], "a JAX config override FIELD=VALUE (repeatable)",
                            flag_values=fv)
  flags.DEFINE_integer("peer_epochs", 6, "the peers' budget: epochs of the faces and their "
                       "mirrors (parity's Keras ran 4)", flag_values=fv)
  flags.DEFINE_string("keras_python", PEER_VENV["keras"], "Python of a TensorFlow venv",
                      flag_values=fv)
  flags.DEFINE_string("torch_python", PEER_VENV["torch"], "Python of a PyTorch venv",
                      flag_values=fv)
  flags.DEFINE_string("bench", BENCH, "the folder of keras_seed_real.py and torch_seed.py",
                      flag_values=fv)
  flags.DEFINE_string("mtfl_csv", ablate.MTFL_CSV, "MTFL's faces", flag_values=fv)
  flags.DEFINE_string("scratch", os.path.join(os.path.expanduser("~"), ".cache", "facekp_jax",
                                              "time_to_accuracy"),
                      "split files and run folders (outside the repository)", flag_values=fv)
  flags.DEFINE_string("out_dir", DEFAULT_OUT, "runs.jsonl, table.md, curves.png", flag_values=fv)
  cli.parse(fv, "python -m experiments.time_to_accuracy", __doc__, argv)
  if fv.rounds < 1 or fv.peer_epochs < 1 or not fv.systems or set(fv.systems) - set(SYSTEMS):
    cli.usage_error(f"--rounds and --peer_epochs must be >= 1 and --systems a list of "
                    f"{list(SYSTEMS)}")
  if not fv.threshold or min(fv.threshold) <= 0:
    cli.usage_error("--threshold must be > 0")
  for s in set(fv.systems) & set(PEER_SYSTEMS):
    python = fv.keras_python if s == "keras" else fv.torch_python
    if not os.path.isfile(python):
      cli.fail(f"{python}: no Python for the {s} peer; make its throw-away venv (python -m "
               "experiments.time_to_accuracy --help shows how) or name it with "
               f"--{s}_python")
  try:
    settings = [ablate.parse_setting(s) for s in fv.set]
  except ValueError as e:
    cli.usage_error(e)
  base = resnet.get_config()
  base.data.train_csv = fv.mtfl_csv if fv.data == "mtfl" else ""
  for path, value in settings:
    if path.startswith("data.synthetic"):  # The faces to split: what the JAX runs would make.
      ablate.set_field(base, path, value)
  os.makedirs(fv.scratch, exist_ok=True)
  os.makedirs(fv.out_dir, exist_ok=True)
  try:
    pool, held = ablate.heldout_files(base, fv.data, fv.scratch,
                                      ablate.HELDOUT_FRACTION)
  except OSError as e:
    cli.fail(e)
  runs = os.path.join(fv.out_dir, "runs.jsonl")
  records = [r for r in _records(runs) if r.get("data") == fv.data]
  done = {(r["system"], r["round"]) for r in records}
  for rnd in range(1, fv.rounds + 1):
    for system in fv.systems:
      if (system, rnd) in done:
        continue
      with tempfile.TemporaryDirectory(dir=fv.scratch) as scratch:
        try:
          record = run_once(system, rnd, pool, held, fv, scratch)
        except RuntimeError as e:
          cli.fail(e)
      records.append(record)
      with open(runs, "a") as f:
        f.write(json.dumps(record) + "\n")
      print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)
      table = summary(records, fv.threshold)
      text = (_header(fv, pool, held) + table + "\n").encode()
      files.atomic_write(os.path.join(fv.out_dir, "table.md"), lambda f, t=text: f.write(t))
      plot(records, fv.threshold, os.path.join(fv.out_dir, "curves.png"))
  print(summary(records, fv.threshold))


def _header(fv, pool: str, held: str) -> str:
  return (f"# Time to accuracy on {fv.data}\n\n"
          f"- data: `ablate.heldout_files`' seeded 80/20 split of `{fv.data}` "
          f"({os.path.basename(pool)} trains, {os.path.basename(held)} is scored after every "
          "epoch; RMSE in px over the present coordinates)\n"
          f"- seconds: wall, from the command's start (imports, data, compilation, every epoch "
          f"and its scoring) to the first held-out score at or under the threshold; round r "
          f"runs every system at seed r - 1, systems alternating\n"
          f"- JAX: `{fv.config}` {' '.join(fv.set)} (its own epochs and schedule), no "
          f"compilation cache; peers: {fv.peer_epochs} epochs of the faces and their mirrors\n"
          f"- machine: {machine()}; command: `python -m experiments.time_to_accuracy "
          f"--data={fv.data} --systems={','.join(fv.systems)} --rounds={fv.rounds}`\n\n")


if __name__ == "__main__":
  main()

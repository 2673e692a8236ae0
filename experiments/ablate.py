"""Ablation studies: arms of config overrides of configs/resnet.py, several seeds each.

  python -m experiments.ablate --study=flip                    # built-in synthetic faces
  python -m experiments.ablate --study=flip --dataset=mtfl     # ../shared/data/mtfl_train.csv.gz
  python -m experiments.ablate --list                          # studies, arms, budgets
  # Full-size settings, for an accelerator:
  python -m experiments.ablate --study=flip --model=full --epochs=50 --faces=2140

Each study is a list of arms; an arm is a set of config overrides (``field: value``, or
``field: function of the budgeted config`` for relative changes such as "twice the
filters"). Every arm runs for every seed (``--seeds=3``: seeds 0, 1, 2) under one budget:
the model size (``--model``: tiny, small, full), ``--epochs``, ``--faces`` (built-in faces
generated, or real faces sampled from the file) and any ``--set field=value``. Each study
carries a proposed budget per data set that finishes in about 25 minutes on a 2-core CPU.

Runs go through ``facekp_jax.training.loop.train_and_evaluate`` in this process, each in its own
workdir under ``--scratch`` (outside the repository: checkpoints are never committed),
named by arm, seed and a hash of the whole resolved config. A run that finished is
skipped on a re-run (a changed budget is a new config, hence a new run); one that was
stopped resumes from its checkpoint; one that fails is reported and the others go on.

Scoring. ``config.seed`` seeds the initialisation, augmentation and the train/validation
split, so for a given seed every arm is scored on the same validation faces, and the
table's paired difference compares arms seed by seed. Arms that change the data itself
(study ``rows``: complete rows only vs all rows) would split different faces; such a
study instead splits the faces once here, trains every arm on the training part (each
run's own validation split of it only drives its learning curve) and scores every arm on
the present coordinates of the same held-out faces.

Writes ``--out/<study>/<dataset>/``: ``table.md`` (mean +- sd of RMSE and NME per arm,
the paired difference from the first arm, wall time, seeds), ``rmse_nme.png`` (every
seed's point, mean +- sd per arm) and ``results.json`` (the same, per run).
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import hashlib
import json
import os
import sys
import time
import warnings
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from absl import flags

from configs import resnet
from experiments.studies import (
  DATASETS,
  MODELS,
  MTFL_PARTIAL_DROPS,
  MTFL_PARTIAL_SHARE,
  OLD_DEFAULTS,
  STUDIES,
  STUDY_PINNED,
  Arm,
  Budget,
  Study,
  csv_stem,
  write_frame,
)
from facekp_jax import cli
from facekp_jax.core import errors, files, keypoints, plots
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.data import synthetic
from facekp_jax.serving import predictor, scoring
from facekp_jax.training import config as config_lib
from facekp_jax.training import interrupts, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MTFL_CSV = os.path.join(ROOT, "..", "shared", "data", "mtfl_train.csv.gz")
DEFAULT_OUT = os.path.join(ROOT, "experiments", "results")
DEFAULT_SCRATCH = os.path.join(os.path.expanduser("~"), ".cache", "facekp_jax", "ablate")
_HELDOUT_SPLIT_SEED = 0xAB1A7E  # One held-out split per data set, whatever the run seeds.
_SUBSET_SEED = 0xFACE5
HELDOUT_FRACTION = 0.2  # The held-out share of a study's faces (configs/resnet.py's split).

# ----------------------------------------------------------------------------- configs


def set_field(config, path: str, value) -> None:
  """``config.a.b = value`` for ``path`` "a.b"; a function is called on the config first."""
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise KeyError(f"unknown config field {path!r}")
  node[leaf] = value(config) if callable(value) else value


def parse_setting(text: str) -> tuple[str, Any]:
  """``"field=value"`` with a Python literal value (a bare word stays a string)."""
  if "=" not in text:
    raise ValueError(f"--set wants field=value, got {text!r}")
  path, raw = text.split("=", 1)
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return path.strip(), value


def budget_config(budget: Budget, dataset: str, train_csv: str, settings,
                  old_defaults: bool = False) -> Any:
  """configs/resnet.py under a budget, on a data set, with ``--set`` settings (no arm yet);
  ``old_defaults``: the recipe before the accuracy studies (``OLD_DEFAULTS``) under them."""
  config = resnet.get_config()
  _apply(config, STUDY_PINNED)
  if old_defaults:
    _apply(config, OLD_DEFAULTS)
  for path, value in MODELS[budget.model].items():
    set_field(config, path, value)
  config.num_epochs = budget.epochs
  # The studies ran before keypoint layouts: MTFL's faces read as Kaggle's 15 (10 never
  # labelled, masked out). Pinned, so that their finished runs stay theirs and arms compare.
  config.data.keypoints = keypoints.KAGGLE.name
  if dataset == "synthetic":
    config.data.train_csv = train_csv
    config.data.rows = "complete"  # No gaps: the same rows either way; pinned, as the studies ran.
    if budget.faces:
      config.data.synthetic_n = budget.faces
  else:
    config.data.train_csv = train_csv
    config.data.rows = "all"  # Real faces with 5 of the 15 keypoints: the masked loss.
  for path, value in settings:
    set_field(config, path, value)
  return config


def _apply(config, overrides: dict) -> dict:
  """Sets ``overrides`` on ``config``; returns them with their resolved values."""
  applied = {}
  for path, value in overrides.items():
    set_field(config, path, value)
    node = config
    for p in path.split("."):
      node = node[p]
    applied[path] = node
  return applied


def arm_config(base, study: Study, dataset: str, arm: Arm, seed: int):
  """The resolved config of one run, and the arm's overrides (resolved values)."""
  config = base.copy_and_resolve_references()
  _apply(config, study.common.get(dataset, {}))
  applied = _apply(config, arm.overrides_for(dataset))
  config.seed = seed
  return config, applied


def config_hash(config) -> str:
  """A run's name: the hash of ``config_lib.identity``."""
  return hashlib.sha1(config_lib.identity(config).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- data


def mtfl_subset(path: str, faces: int | None, folder: str) -> str:
  """``path`` itself, or a file of ``faces`` of its rows drawn at random (fixed seed)."""
  if not faces:
    return path
  out = os.path.join(folder, f"mtfl-{faces}.csv")
  if not os.path.exists(out):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if faces > len(frame):
      raise errors.DataError(f"{path}: {faces} faces asked for, the file has {len(frame)}")
    keep = np.sort(np.random.default_rng(_SUBSET_SEED).permutation(len(frame))[:faces])
    write_frame(frame.iloc[keep], out)
  return out


def split_paths(folder: str, tag: str) -> tuple[str, str]:
  """(training-pool CSV, held-out CSV) of the split of the faces named ``tag`` under
  ``folder``: ``heldout_files``' names."""
  return os.path.join(folder, f"{tag}-pool.csv"), os.path.join(folder, f"{tag}-heldout.csv")


def heldout_files(base, dataset: str, folder: str, val_fraction: float,
                  partial: bool = False) -> tuple[str, str]:
  """Splits the budget's faces once: (training-pool CSV, held-out CSV) under ``folder``.

  Built-in faces are generated with the study's settings (e.g. missing labels); images are
  uint8 in both paths, so the files hold exactly the faces the generator would give. Real
  faces: with ``partial``, the pool loses the mouth corners of ``MTFL_PARTIAL_SHARE`` of
  its faces.
  """
  d = base.data
  if dataset == "synthetic":
    tag = f"synthetic-{d.synthetic_n}-seed{d.synthetic_seed}" + ("-missing" * d.synthetic_missing)
  else:
    tag = os.path.basename(csv_stem(d.train_csv)) + ("-partial70" if partial else "")
  pool, held = split_paths(folder, tag)
  if os.path.exists(pool) and os.path.exists(held):
    return pool, held
  if dataset == "synthetic":
    images, coords = synthetic.generate(d.synthetic_n, seed=d.synthetic_seed,
                                        missing=d.synthetic_missing)
    pool_idx, held_idx = dataset_lib.split(len(images), val_fraction, _HELDOUT_SPLIT_SEED)
    write_frame(synthetic.to_frame(images[held_idx], coords[held_idx]), held)
    write_frame(synthetic.to_frame(images[pool_idx], coords[pool_idx]), pool)
    return pool, held
  frame = pd.read_csv(d.train_csv, dtype=str, keep_default_na=False)
  pool_idx, held_idx = dataset_lib.split(len(frame), val_fraction, _HELDOUT_SPLIT_SEED)
  pool_frame = frame.iloc[np.sort(pool_idx)].copy()
  if partial:
    rows = np.random.default_rng(_HELDOUT_SPLIT_SEED).random(len(pool_frame)) < MTFL_PARTIAL_SHARE
    drop = [f"{name}_{axis}" for name in MTFL_PARTIAL_DROPS for axis in "xy"]
    pool_frame.loc[rows, drop] = ""
  write_frame(frame.iloc[np.sort(held_idx)], held)
  write_frame(pool_frame, pool)
  return pool, held


# ----------------------------------------------------------------------------- runs


# Fields that change how a trained model is scored, not how it trains: a finished run is
# re-scored (``ablate-<scoring>.json`` beside its ``ablate.json``), never retrained, for them.
SCORING_FIELDS = ("tta", "tta_rotations")


def scoring_tag(config) -> str:
  """The scoring fields' values in a file name: ``tta-off``, ``tta-flip``, ``tta-flip-rot10``."""
  if not config.tta:
    return "tta-off"
  return "tta-flip" + "".join(f"-rot{a:g}" for a in config.get("tta_rotations", ()))


def run_one(config, workdir: str, heldout_csv: str | None, robustness: bool = False) -> dict:
  """Trains (or resumes) one run and returns its record; a finished run is only read, or
  re-scored on the held-out faces where the arm scores differently (``SCORING_FIELDS``)."""
  done = os.path.join(workdir, "ablate.json")
  if os.path.exists(done):
    with open(done) as f:
      record = json.load(f)
    if not heldout_csv or scoring_tag(config_lib.read_config(workdir)) == scoring_tag(config):
      return dict(record, skipped=True)
    rescored = os.path.join(workdir, f"ablate-{scoring_tag(config)}.json")
    if not os.path.exists(rescored):
      files.write_json(rescored, _scores(config, workdir, heldout_csv, robustness))
    with open(rescored) as f:
      return dict(record, **json.load(f), skipped=True)
  t0 = time.time()
  results = loop.train_and_evaluate(config, workdir)
  record = {k: results.get(k) for k in ("val_rmse", "val_nme", "mean_shape_val_rmse", "steps",
                                        "num_train", "num_val", "source")}
  record["rmse"], record["nme"] = results.get("val_rmse"), results.get("val_nme")
  if heldout_csv:
    record.update(_scores(config, workdir, heldout_csv, robustness))
  record["wall_seconds"] = time.time() - t0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    epochs = [json.loads(line)["epoch_seconds"] for line in f if line.strip()]
  # The median epoch leaves out the first epoch's compilation and the run's fixed costs.
  record["epoch_seconds"] = float(np.median(epochs)) if epochs else None
  files.write_json(done, record)
  return dict(record, skipped=False)


def _scores(config, workdir: str, heldout_csv: str, robustness: bool) -> dict:
  """A trained run's held-out scores as ``config`` scores (its TTA), and its raw weights'."""
  # The final state, as the validation numbers; read-only restore of the latest save.
  model = predictor.load(workdir, "latest")
  model.config.tta_rotations = tuple(config.get("tta_rotations", ()))
  out = _heldout_scores(model, heldout_csv, config.tta, robustness)
  if model.config.ema_decay:  # The same run's raw weights, beside its moving average.
    raw = predictor.load(workdir, "latest", ema=False)
    raw.config.tta_rotations = model.config.tta_rotations
    out["rmse_raw_weights"] = _heldout_scores(raw, heldout_csv, config.tta, False)["rmse"]
  return out


def _heldout_scores(model, heldout_csv: str, tta: bool, robustness: bool) -> dict:
  """RMSE, NME, counts, and (``robustness``) the perturbations' RMSE and ratios."""
  scores, _, _ = scoring.evaluate(model, heldout_csv, tta=tta, perturbed=robustness)
  out = {"rmse": scores["rmse"], "nme": scores["nme"], "fr": scores["fr_0.10"],
         "auc": scores["auc_0.10"], "heldout_count": scores["count"],
         "heldout_faces": scores["num_faces"]}
  if robustness:
    r = scores["robustness"]
    out["robustness"] = {name: m["rmse"] for name, m in r["perturbations"].items()}
    out.update({f"ratio_{group}": value for group, value in r["groups"].items()})
  return out


def mean_sd(values) -> tuple[float | None, float | None]:
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None, None
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), sd


def summarise(arms: list[dict]) -> None:
  """Adds ``summary`` to each arm: mean/sd of RMSE, NME, wall time; the paired RMSE
  difference from the first arm over the seeds both finished."""
  ref = {r["seed"]: r["rmse"] for r in arms[0]["runs"] if "rmse" in r}
  for arm in arms:
    done = [r for r in arm["runs"] if "rmse" in r]
    s = {"n": len(done), "failed": len(arm["runs"]) - len(done)}
    for key in ("rmse", "nme", "wall_seconds", "epoch_seconds", "mean_shape_val_rmse",
                "rmse_raw_weights", *(f"ratio_{g}" for g in _RATIO_COLUMNS)):
      s[f"{key}_mean"], s[f"{key}_sd"] = mean_sd([r.get(key) for r in done])
    diffs = [r["rmse"] - ref[r["seed"]] for r in done if r["seed"] in ref]
    s["paired_rmse_diff_mean"], s["paired_rmse_diff_sd"] = mean_sd(diffs)
    s["paired_n"] = len(diffs)
    arm["summary"] = s


_RATIO_COLUMNS = ("rot+-20", "rot+-30", "scale0.85", "scale1.15", "shift+-6")


def _fmt(mean, sd, digits) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def fmt_value(v) -> str:
  return json.dumps(v).replace("[", "(").replace("]", ")") if isinstance(v, (list, tuple)) \
      else repr(v)


def markdown(result: dict) -> str:
  """The study's table, with its question, budget, scoring and command."""
  arms, b = result["arms"], result["budget"]
  ref = arms[0]["name"]
  scored = ("the present coordinates of the same held-out faces for every arm and seed "
            f"({result.get('heldout_faces', '?')} faces)" if result["heldout"] else
            "each run's validation split (seeded by the run's seed: the same faces for every "
            "arm of a seed)")
  lines = [
      f"# Study `{result['study']}` on {result['dataset']}", "",
      result["question"], "",
      f"- budget: model `{b['model']}`, {b['epochs']} epochs, "
      f"{b['faces'] or 'all'} faces ({result['source']}); seeds {result['seeds']}"
      + "".join(f"; `{k}={fmt_value(v)}`" for k, v in result["settings"].items())
      + "".join(f"; every arm: `{k}={fmt_value(v)}`" for k, v in result["common"].items()),
      f"- scored on {scored}; errors in pixels of the 96x96 image",
      f"- command: `{result['command']}`", "",
      f"| arm | overrides | RMSE (px) | NME | Δ RMSE vs {ref} (paired) | s/epoch | wall s/run "
      "| seeds |" + "".join(f" {g} ratio |" for g in _RATIO_COLUMNS) * result["robustness"],
      "|---|---|---|---|---|---|---|---|" + "---|" * len(_RATIO_COLUMNS) * result["robustness"]]
  for arm in arms:
    s = arm["summary"]
    overrides = ", ".join(f"`{k}={fmt_value(v)}`" for k, v in arm["overrides"].items()) or "—"
    diff = "—" if arm["name"] == ref else _fmt(s["paired_rmse_diff_mean"],
                                                s["paired_rmse_diff_sd"], 3)
    seeds = f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
    lines.append(f"| {arm['name']} | {overrides} | {_fmt(s['rmse_mean'], s['rmse_sd'], 3)} | "
                 f"{_fmt(s['nme_mean'], s['nme_sd'], 4)} | {diff} | "
                 f"{_fmt(s['epoch_seconds_mean'], None, 1)} | "
                 f"{_fmt(s['wall_seconds_mean'], None, 0)} | {seeds} |" + "".join(
                     f" {_fmt(s[f'ratio_{g}_mean'], s[f'ratio_{g}_sd'], 3)} |"
                     for g in _RATIO_COLUMNS) * result["robustness"])
  lines += ["", "s/epoch: median epoch time (training and the epoch's validation pass); wall "
            "s/run: the whole run with compilation, which arms after the first of a seed mostly "
            "find in the compilation cache."]
  if result["robustness"]:
    lines += ["", "Ratios: the held-out RMSE under each perturbation over the unperturbed "
              "held-out RMSE of the same run (mean of the group's perturbations, e.g. -20 and "
              "+20 degrees), mean ± sd over seeds; labels the perturbation pushes out of the "
              "frame are not scored (facekp_jax/serving/robustness.py)."]
  raw = [(a["name"], a["summary"]) for a in arms
         if a["summary"]["rmse_raw_weights_mean"] is not None]
  if raw:
    lines += ["", "EMA arms, the same runs' raw weights on the held-out faces: " + "; ".join(
        f"{name} {_fmt(s['rmse_raw_weights_mean'], s['rmse_raw_weights_sd'], 3)} px"
        for name, s in raw) + "."]
  if result["heldout"]:
    lines += ["", "Mean-shape baseline on the held-out faces: "
              f"{result['heldout_baseline_rmse']:.3f} px (the training pool's mean of each "
              "coordinate)."]
  else:
    baseline = mean_sd([a["summary"]["mean_shape_val_rmse_mean"] for a in arms])[0]
    if baseline is not None:
      lines += ["", f"Mean-shape baseline on the runs' validation splits: {baseline:.3f} px."]
  failures = [f"- {a['name']} seed {r['seed']}: {r['error']}" for a in arms for r in a["runs"]
              if "error" in r]
  if failures:
    lines += ["", "Failed runs (a re-run retries them):"] + failures
  return "\n".join(lines) + "\n"


def plot(result: dict):
  """RMSE and NME per arm: every seed's point and the mean ± sd."""
  arms = result["arms"]
  fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(arms) + 2), 4))
  for ax, key, label in zip(axes, ("rmse", "nme"), ("RMSE (pixels)", "NME")):
    for i, arm in enumerate(arms):
      values = [r[key] for r in arm["runs"] if r.get(key) is not None]
      jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
      ax.plot(i + jitter, values, "o", color="tab:blue", alpha=0.5, ms=5)
      mean, sd = mean_sd(values)
      if mean is not None:
        ax.errorbar(i + 0.3, mean, yerr=sd or 0.0, fmt="s", color="black", capsize=4, ms=5)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([a["name"] for a in arms], rotation=20, ha="right")
    ax.set_ylabel(label)
    ax.grid(True, axis="y", alpha=0.3)
  b = result["budget"]
  fig.suptitle(f"{result['study']} on {result['dataset']}: {b['model']} model, {b['epochs']} "
               f"epochs, {b['faces'] or 'all'} faces (dots: seeds; squares: mean ± sd)",
               fontsize=9)
  fig.tight_layout()
  return fig


def run_study(name: str, dataset: str, budget: Budget, seeds: list[int], *, settings=(),
              arms: list[str] | None = None, scratch: str = DEFAULT_SCRATCH,
              out: str = DEFAULT_OUT, mtfl_csv: str = MTFL_CSV, command: str = "",
              log=print, tables_only: bool = False) -> dict:
  """Runs (or finishes) every arm x seed of a study and writes its table, plot and JSON.

  ``tables_only``: train nothing; the table lists the runs that finished (any study's).

  Returns:
    The results (also ``out/<study>/<dataset>/results.json``).
  """
  study = STUDIES[name]
  if dataset not in study.datasets:
    raise ValueError(f"study {name!r} does not apply to {dataset}: {study.note}")
  chosen = [a for a in study.arms if arms is None or a.name in arms]
  if arms is not None and {a.name for a in chosen} != set(arms):
    raise ValueError(f"unknown arm(s) {sorted(set(arms) - {a.name for a in study.arms})} of "
                     f"study {name!r}; its arms: {[a.name for a in study.arms]}")
  runs_dir = os.path.join(scratch, name, dataset)
  data_dir = os.path.join(scratch, "data")
  train_csv = "" if dataset == "synthetic" else mtfl_subset(mtfl_csv, budget.faces, data_dir)
  # The earlier studies (no robustness scores) ran before today's defaults: their recipe.
  base = budget_config(budget, dataset, train_csv, settings, old_defaults=not study.robustness)
  shared = arm_config(base, study, dataset, Arm("common"), 0)[0]  # The study's common settings.
  heldout_csv = None
  if study.heldout:
    pool, heldout_csv = heldout_files(shared, dataset, data_dir, HELDOUT_FRACTION,
                                      partial=study.partial_labels)
    base.data.train_csv = pool
    heldout_baseline = _mean_shape_rmse(pool, heldout_csv)
  configs = {(a.name, s): arm_config(base, study, dataset, a, s) for a in chosen for s in seeds}
  for config, _ in configs.values():  # A bad setting fails here, before any run starts.
    config_lib.check_config(config, jax.device_count())
  if not study.heldout:  # Same seed, same data: the arms are scored on the same faces.
    for s in seeds:
      datas = {configs[(a.name, s)][0].data.to_json(sort_keys=True) for a in chosen}
      if len(datas) > 1:
        raise ValueError(f"study {name!r}: arms change the data; mark it heldout")
  results = {"study": name, "dataset": dataset, "question": study.question,
             "budget": dataclasses.asdict(budget), "seeds": list(seeds),
             "settings": {k: v for k, v in settings},
             "common": _apply(base.copy_and_resolve_references(), study.common.get(dataset, {})),
             "heldout": study.heldout, "robustness": study.robustness,
             "command": command,
             **({"heldout_baseline_rmse": heldout_baseline} if study.heldout else {}),
             "source": _source(shared, dataset, mtfl_csv, partial=study.partial_labels),
             "arms": []}
  for arm in chosen:
    entry = {"name": arm.name, "overrides": configs[(arm.name, seeds[0])][1], "runs": []}
    results["arms"].append(entry)
    for seed in seeds:
      config = configs[(arm.name, seed)][0]
      workdir = os.path.join(runs_dir, arm.name, f"seed{seed}-{config_hash(config)}")
      workdir = _same_run(scratch, dataset, seed, config, study.robustness,
                          study.heldout) or workdir
      if tables_only and not os.path.exists(os.path.join(workdir, "ablate.json")):
        continue  # Not finished: left out of the table.
      try:
        record = run_one(config, workdir, heldout_csv, study.robustness)
      except (interrupts.Interrupted, KeyboardInterrupt):
        raise  # Stop the study; a re-run resumes this run from its checkpoint.
      except Exception as e:  # pylint: disable=broad-except
        message = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        log(f"  {arm.name} seed {seed}: FAILED ({message})")
        entry["runs"].append({"seed": seed, "error": message,
                              "run": os.path.relpath(workdir, scratch)})
        continue
      if study.heldout:
        results["heldout_faces"] = record["heldout_faces"]
      status = "done before" if record.pop("skipped") else f"{record['wall_seconds']:.0f}s"
      log(f"  {arm.name} seed {seed}: RMSE {record['rmse']:.3f} px, NME {record['nme']:.4f}"
          + (f", rot+-20 x{record['ratio_rot+-20']:.2f}, rot+-30 x{record['ratio_rot+-30']:.2f}"
             if study.robustness else "") + f" ({status})")
      entry["runs"].append(dict(record, seed=seed, run=os.path.relpath(workdir, scratch)))
  folder = os.path.join(out, name, dataset)
  os.makedirs(folder, exist_ok=True)
  results = with_earlier_arms(results, os.path.join(folder, "results.json"),
                              [a.name for a in study.arms])
  summarise(results["arms"])  # Paired with the first arm, earlier arms included.
  files.write_json(os.path.join(folder, "results.json"), files.jsonable(results))
  with open(os.path.join(folder, "table.md"), "w") as f:
    f.write(markdown(results))
  plots.save_figure(plot(results), os.path.join(folder, "rmse_nme.png"))
  log(f"wrote {folder}/table.md, rmse_nme.png, results.json")
  return results


def with_earlier_arms(results: dict, path: str, order: list[str]) -> dict:
  """``results`` with the arms that an earlier results file at ``path`` holds and this run did
  not (a run of some arms, ``--arms``, keeps the others' figures), all in the study's ``order``;
  only when that file is of the same study, data, budget, settings and held-out faces. Its
  command is kept beside this one's."""
  if not os.path.exists(path):
    return results
  with open(path) as f:
    earlier = json.load(f)
  same = ("study", "dataset", "budget", "settings", "heldout_faces")
  if any(files.jsonable(results.get(k)) != earlier.get(k) for k in same):
    return results
  ran = {a["name"] for a in results["arms"]}
  kept = [a for a in earlier["arms"] if a["name"] not in ran]
  if not kept:
    return results
  arms = sorted(results["arms"] + kept,
                key=lambda a: order.index(a["name"]) if a["name"] in order else len(order))
  commands = [c for c in earlier.get("command", "").split("; ") + [results["command"]] if c]
  return dict(results, arms=arms, command="; ".join(dict.fromkeys(commands)))


def _same_run(scratch: str, dataset: str, seed: int, config, robustness: bool,
              heldout: bool = False) -> str | None:
  """A finished run (of any study) that trained this very config and seed, hence the same
  data, held-out faces and model, and whose record has the scores this study needs.

  Configs compare as a workdir reads them (``training.config.upgrade``: a field added since the run
  means what the run did), so new config fields do not orphan finished runs.
  """
  def trained(saved: dict) -> dict:  # What training read: scoring fields left out.
    return {k: v for k, v in config_lib.upgrade(saved).items()
            if not (heldout and k in SCORING_FIELDS)}

  want = trained(json.loads(config.to_json()))
  for done in sorted(glob.glob(os.path.join(scratch, "*", dataset, "*", f"seed{seed}-*",
                                            "ablate.json"))):
    folder = os.path.dirname(done)
    try:
      with open(done) as f:
        record = json.load(f)
      with open(os.path.join(folder, "config.json")) as f:
        saved = trained(json.load(f))
    except (OSError, ValueError):
      continue
    if saved == want and "rmse" in record and (not robustness or "ratio_rot+-20" in record):
      return folder
  return None


def _mean_shape_rmse(train_csv: str, test_csv: str) -> float:
  """RMSE on ``test_csv`` of the mean of each coordinate over ``train_csv`` (labels only)."""
  pool, held = (pd.read_csv(p, usecols=list(keypoints.KAGGLE.columns)).to_numpy(np.float64)
                for p in (train_csv, test_csv))
  with warnings.catch_warnings():  # Columns no face labels (real faces: 10 of 30) stay NaN.
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.nanmean(pool, axis=0)
  return float(np.sqrt(np.nanmean(np.square(held - mean))))


def _source(base, dataset: str, mtfl_csv: str, partial: bool = False) -> str:
  """The data set in words, for the table."""
  if dataset == "mtfl":
    return (f"real faces of {os.path.basename(mtfl_csv)}, 5 of 15 keypoints, masked loss" +
            (f"; {MTFL_PARTIAL_SHARE:.0%} of the training faces without mouth corners"
             if partial else ""))
  return "built-in synthetic faces" + (", Kaggle's missing-label pattern"
                                       if base.data.synthetic_missing else "")


# ----------------------------------------------------------------------------- command line


def parse_seeds(text: str) -> list[int]:
  """"3" -> [0, 1, 2]; "0,4,7" -> [0, 4, 7]."""
  seeds = ([int(s) for s in text.split(",") if s.strip()] if "," in text
           else list(range(int(text))))
  if not seeds or min(seeds) < 0:
    raise ValueError(text)
  return seeds


def describe() -> str:
  lines = []
  for name, study in STUDIES.items():
    lines.append(f"{name}: {study.question}")
    for arm in study.arms:
      for dataset in study.datasets:
        overrides = ", ".join(f"{k}: {v.description}" if callable(v) else f"{k}={fmt_value(v)}"
                              for k, v in arm.overrides_for(dataset).items()) or "(reference)"
        where = f" (on {dataset})" if arm.by_dataset else ""
        lines.append(f"    {arm.name:<16}{overrides}{where}")
        if not arm.by_dataset:
          break
    for dataset, b in study.budgets.items():
      lines.append(f"    budget on {dataset}: {b.model} model, {b.epochs} epochs, "
                   f"{b.faces or 'all'} faces")
    if study.note:
      lines.append(f"    {study.note}")
  return "\n".join(lines)


def main(argv=None) -> dict | None:
  fv = cli.command_flags()
  flags.DEFINE_enum("study", None, sorted(STUDIES), "the study to run", flag_values=fv)
  flags.DEFINE_bool("list", False, "describe the studies and exit", flag_values=fv)
  flags.DEFINE_enum("dataset", "synthetic", DATASETS, "built-in faces or MTFL's real faces",
                    flag_values=fv)
  flags.DEFINE_string("seeds", "3", "a count (3: seeds 0,1,2) or a comma list (0,: seed 0)",
                      flag_values=fv)
  flags.DEFINE_string("arms", None, "comma list: run only these arms (the first is the "
                      "reference of the paired difference)", flag_values=fv)
  flags.DEFINE_enum("model", None, sorted(MODELS), "model size (default: the study's)",
                    flag_values=fv)
  flags.DEFINE_integer("epochs", None, "epochs per run (default: the study's)", flag_values=fv)
  flags.DEFINE_integer("faces", None, "built-in faces to generate, or real faces to sample from "
                       "the file; 0: every face of the file (default: the study's)",
                       flag_values=fv)
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE: a config override for every run, e.g. "
                            "--set batch_size=16 (repeatable)", flag_values=fv)
  flags.DEFINE_string("scratch", DEFAULT_SCRATCH, "run workdirs (outside the repository)",
                      flag_values=fv)
  flags.DEFINE_string("out", DEFAULT_OUT, "where tables, plots and JSON go", flag_values=fv)
  flags.DEFINE_string("mtfl_csv", MTFL_CSV, "MTFL's faces", flag_values=fv)
  flags.DEFINE_string("compile_cache", None, "JAX's persistent compilation cache, shared by the "
                      "runs (default: SCRATCH/jax_cache; '' turns it off)", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "the runs' own per-epoch log lines", flag_values=fv)
  flags.DEFINE_bool("tables_only", False, "train nothing: rewrite the table, plot and JSON from "
                    "the runs that finished", flag_values=fv)
  cli.parse(fv, "python -m experiments.ablate", __doc__.split("\n\n")[0], argv)
  args = fv
  if args.list:
    print(describe())
    return None
  if not args.study:
    cli.usage_error("--study is required (or --list)")
  try:
    seeds = parse_seeds(args.seeds)
  except ValueError:
    cli.usage_error(f"--seeds={args.seeds}: a count >= 1 or a comma list of whole numbers "
                    "(--seeds=0, is seed 0)")
  study = STUDIES[args.study]
  if args.dataset not in study.budgets:
    cli.usage_error(f"study {args.study!r} does not apply to {args.dataset}: {study.note}")
  proposed = study.budgets[args.dataset]
  budget = Budget(model=args.model or proposed.model, epochs=args.epochs or proposed.epochs,
                  faces=proposed.faces if args.faces is None else (args.faces or None))
  try:
    settings = [parse_setting(s) for s in args.set]
  except ValueError as e:
    cli.usage_error(str(e))
  scratch = os.path.realpath(args.scratch)
  if scratch == ROOT or scratch.startswith(ROOT + os.sep):
    cli.usage_error(f"--scratch {args.scratch} is inside the repository; checkpoints must stay "
                    "out")
  if not args.verbose:
    cli.quiet_libraries()
  cache = os.path.join(scratch, "jax_cache") if args.compile_cache is None else args.compile_cache
  if cache:  # Arms that share a model (and seed) then compile it once, not once per run.
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  command = " ".join(["python -m experiments.ablate"] + list(
      sys.argv[1:] if argv is None else argv))
  print(f"study {args.study} on {args.dataset}: {budget}, seeds {seeds}")
  try:
    return run_study(args.study, args.dataset, budget, seeds, settings=settings,
                     arms=args.arms.split(",") if args.arms else None, scratch=args.scratch,
                     out=args.out, mtfl_csv=args.mtfl_csv, command=command,
                     tables_only=args.tables_only)
  except (errors.DataError, errors.ConfigError, KeyError, ValueError) as e:
    cli.fail(e)
  except interrupts.Interrupted as e:
    print(f"{e} (finished runs are kept; the same command skips them)", file=sys.stderr)
    sys.exit(128 + e.signum)


if __name__ == "__main__":
  main()

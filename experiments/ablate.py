"""Ablation studies: arms of config overrides of configs/resnet.py, several seeds each.

  python experiments/ablate.py --study=flip                    # built-in synthetic faces
  python experiments/ablate.py --study=flip --dataset=mtfl     # ../shared/data/mtfl_train.csv.gz
  python experiments/ablate.py --list                          # studies, arms, budgets
  # Full-size settings, for an accelerator:
  python experiments/ablate.py --study=flip --model=full --epochs=50 --faces=2140

Each study is a list of arms; an arm is a set of config overrides (``field: value``, or
``field: function of the budgeted config`` for relative changes such as "twice the
filters"). Every arm runs for every seed (``--seeds=3``: seeds 0, 1, 2) under one budget:
the model size (``--model``: tiny, small, full), ``--epochs``, ``--faces`` (built-in faces
generated, or real faces sampled from the file) and any ``--set field=value``. Each study
carries a proposed budget per data set that finishes in about 25 minutes on a 2-core CPU.

Runs go through ``facekp_jax.train.train_and_evaluate`` in this process, each in its own
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

import argparse
import ast
import dataclasses
import glob
import hashlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # `python experiments/ablate.py`: configs/ is found from the root.

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import resnet, tiny  # noqa: E402
from facekp_jax import (  # noqa: E402
  cli,
  config_upgrade,
  data,
  evaluate,
  inference,
  interrupts,
  keypoints,
  plots,
  synthetic,
  train,
)
from facekp_jax import workdir as workdir_lib  # noqa: E402

MTFL_CSV = os.path.join(ROOT, "..", "shared", "data", "mtfl_train.csv.gz")
DEFAULT_OUT = os.path.join(ROOT, "experiments", "results")
DEFAULT_SCRATCH = os.path.join(os.path.expanduser("~"), ".cache", "facekp_jax", "ablate")
DATASETS = ("synthetic", "mtfl")
_HELDOUT_SPLIT_SEED = 0xAB1A7E  # One held-out split per data set, whatever the run seeds.
_SUBSET_SEED = 0xFACE5
_HELDOUT_FRACTION = 0.2  # The held-out share of a study's faces (configs/resnet.py's split).

# Model sizes of a budget: overrides of configs/resnet.py's model (and the step it suits).
# Every size keeps the seed's regression head (dense layers): the studies' reference network,
# whatever configs/resnet.py's default head (study `head` compares them).
MODELS: dict[str, dict[str, Any]] = {
    "full": {  # The seed's network: 18.0 M parameters, ~100 training images/s on 2 cores.
        "model.head": "regression",
    },
    "small": {  # A quarter of the width, same depth and head layout: ~0.5 M parameters.
        "model.head": "regression",
        "model.stage_filters": ((16, 16, 64), (32, 32, 128)),
        "model.stage_blocks": (3, 3),
        "model.stem_filters": 16,
        "model.dense_sizes": (512, 256),
        "model.dropout_rates": (0.2, 0.1),
        "model.conv_bias": False,
        "learning_rate": 1e-3,
    },
    "tiny": {  # configs/tiny.py's network and step size.
        "model.head": "regression",
        **{f"model.{k}": v for k, v in tiny.get_config().model.items() if k in (
            "stage_filters", "stage_blocks", "stem_filters", "dense_sizes", "dropout_rates",
            "conv_bias")},
        "learning_rate": tiny.get_config().learning_rate,
    },
}


@dataclasses.dataclass(frozen=True)
class Budget:
  """What one run may spend: model size, epochs, and faces (None: every face of the file)."""

  model: str
  epochs: int
  faces: int | None


@dataclasses.dataclass(frozen=True)
class Arm:
  """A named set of config overrides; ``by_dataset`` replaces them on the data sets it names."""

  name: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  by_dataset: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

  def overrides_for(self, dataset: str) -> dict[str, Any]:
    return self.by_dataset.get(dataset, self.overrides)


@dataclasses.dataclass(frozen=True)
class Study:
  """A question, its arms (the first is the reference), and a proposed budget per data set.

  Attributes:
    common: overrides every arm shares (per data set), e.g. labels with gaps.
    heldout: score every arm on one held-out set split here (the arms change the data, or
      the question is how well a model does on faces no arm trained on).
    partial_labels: on real faces, the training pool loses the mouth corners of 70 % of its
      faces (Kaggle's share of partial rows; study ``rows``).
    robustness: also score the held-out faces rotated, scaled and shifted
      (``facekp_jax/robustness.py``); the table gives the RMSE ratios.
    datasets: the data sets the question applies to.
  """

  question: str
  arms: tuple[Arm, ...]
  budgets: dict[str, Budget]
  common: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  heldout: bool = False
  partial_labels: bool = False
  robustness: bool = False
  datasets: tuple[str, ...] = DATASETS
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Relative:
  """An override computed from the budgeted config (e.g. twice its filters), described."""

  description: str
  fn: Callable[[Any], Any]

  def __call__(self, config):
    return self.fn(config)


def _times(factor: float) -> Relative:
  return Relative(f"learning_rate x {factor:.3g}", lambda c: c.learning_rate * factor)


def _scale_filters(factor: float) -> Relative:
  return Relative(f"filters x {factor:g}", lambda c: tuple(
      tuple(max(1, int(round(f * factor))) for f in s) for s in c.model.stage_filters))


def _blocks(description: str, fn: Callable[[int], int]) -> Relative:
  return Relative(description, lambda c: tuple(fn(b) for b in c.model.stage_blocks))


def _third_stage(field: str) -> Relative:
  """A third stage (its map is 2x2): twice the last stage's filters, as many blocks."""
  if field == "filters":
    return Relative("+ a stage of 2x the last filters", lambda c: tuple(
        c.model.stage_filters) + (tuple(2 * f for f in c.model.stage_filters[-1]),))
  return Relative("+ as many blocks", lambda c: tuple(c.model.stage_blocks) + (
      c.model.stage_blocks[-1],))


def _stem(path: str) -> str:
  """``path`` without a ``.csv`` / ``.csv.gz`` ending."""
  return re.sub(r"(\.csv)?(\.gz)?$", "", path)


def _complete_rows_file(config) -> str:
  """A copy of ``config.data.train_csv`` with only its complete rows: every labelled column.

  Real faces label 5 of the 15 keypoints, so ``data.rows="complete"`` (all 30 values) keeps
  none of them; "complete" here means every column the file labels anywhere.
  """
  path = config.data.train_csv
  out = _stem(path) + "-complete.csv"
  if not os.path.exists(out):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    cells = frame[list(keypoints.COLUMNS)].apply(lambda c: c.str.strip() != "")
    labelled = cells.any(axis=0)
    _write_frame(frame[cells.loc[:, labelled].all(axis=1)], out)
  return out


# Real faces with missing labels (study ``rows``): Kaggle's training.csv has all 15 keypoints in
# 2140 of 7049 rows; the other 70 % keep 4 (eye centres, nose tip, bottom lip), losing the mouth
# corners among others. MTFL labels eye centres, nose tip and mouth corners, so the same share of
# its training faces loses the mouth corners (held-out faces keep all 5 points, for scoring).
_MTFL_PARTIAL_SHARE = 4909 / 7049
_MTFL_PARTIAL_DROPS = ("mouth_left_corner", "mouth_right_corner")


# The geometric augmentation the accuracy studies share (study `geometry`'s winner), and the
# defaults before them (for study `defaults`).
_GEOMETRY = {"augment.geometry_prob": 0.75, "augment.rotate_deg": 30.0,
             "augment.scale_range": (0.8, 1.2), "augment.shift_px": 8.0}
# The screens score one weight set without TTA, and keep the unit-scaled regression outputs
# their runs had (configs/resnet.py now trains the regression head on raw pixels; the heatmap
# head ignores both fields).
_NO_EMA_TTA = {"ema_decay": 0.0, "tta": False, "model.output_scale": 48.0,
               "model.output_offset": 48.0}
_HEATMAP_UNUSED = {"model.output_scale": 48.0, "model.output_offset": 48.0}  # As its run had.
_OLD_DEFAULTS = {"augment.geometry_prob": 0.0, "augment.rotate_deg": 0.0,
                 "augment.scale_range": (1.0, 1.0), "augment.shift_px": 0.0, "loss": "mse",
                 "model.heatmap_margin": 0.0,
                 **_NO_EMA_TTA}


# Proposed budgets: about 25 minutes each on this 2-core CPU when it runs nothing else (the
# estimate in experiments/README.md: ~4.5 s per small-model epoch of 2140 built-in faces, ~6 s
# per epoch of 3000 MTFL faces, ~15-25 s of fixed cost per run). Built-in faces: Kaggle's 2140
# complete rows (7049 rows in all for the missing-label study); MTFL: 3000 of its 7650 faces.
STUDIES: dict[str, Study] = {
    "flip": Study(
        question="Does the horizontal flip help, and does it need the left/right label swap "
                 "(the seed flipped without swapping)?",
        arms=(Arm("swap"), Arm("no-swap", {"augment.hflip_swap": False}),
              Arm("no-flip", {"augment.hflip_prob": 0.0})),
        budgets={"synthetic": Budget("small", 30, 2140), "mtfl": Budget("small", 26, 3000)}),
    "augment": Study(
        question="Do vertical flips (faces are upright) hurt? Does brightness augmentation help, "
                 "and how wide should its range be?",
        arms=(Arm("default"), Arm("vflip", {"augment.vflip_prob": 0.5}),
              Arm("no-brightness", {"augment.brightness_prob": 0.0}),
              Arm("brightness-wide", {"augment.brightness_range": (0.5, 2.0)})),
        budgets={"synthetic": Budget("small", 24, 2140), "mtfl": Budget("small", 18, 3000)}),
    "rows": Study(
        question="With missing labels, train on complete rows only or on all rows with the "
                 "masked loss?",
        arms=(Arm("complete", {"data.rows": "complete"}, by_dataset={"mtfl": {
                  "data.train_csv": Relative("the pool's rows with all 5 points",
                                             _complete_rows_file)}}),
              Arm("all", {"data.rows": "all"})),
        budgets={"synthetic": Budget("small", 30, 7049), "mtfl": Budget("small", 30, 3000)},
        common={"synthetic": {"data.synthetic_missing": True}},
        heldout=True, partial_labels=True,
        note="On MTFL, 70 % of the training faces lose their mouth corners (Kaggle's share of "
             "partial rows); held-out faces keep all 5 points."),
    "size": Study(
        question="How do depth (blocks per stage, a third stage) and width (filters) matter?",
        arms=(Arm("base"),
              Arm("shallow", {"model.stage_blocks": _blocks("1 per stage", lambda b: 1)}),
              Arm("deep", {"model.stage_blocks": _blocks("2x per stage", lambda b: 2 * b)}),
              Arm("narrow", {"model.stage_filters": _scale_filters(0.5)}),
              Arm("wide", {"model.stage_filters": _scale_filters(2.0)}),
              Arm("3-stages", {"model.stage_filters": _third_stage("filters"),
                               "model.stage_blocks": _third_stage("blocks")})),
        budgets={"synthetic": Budget("small", 14, 2140), "mtfl": Budget("small", 10, 3000)}),
    "head": Study(
        question="Output head: linear vs ReLU (the seed's: ReLU on raw pixel outputs); direct "
                 "regression vs a heatmap head with soft-argmax.",
        arms=(Arm("linear"),
              Arm("relu-raw", {"model.output_activation": "relu", "model.output_scale": 1.0,
                               "model.output_offset": 0.0}),
              Arm("linear-raw", {"model.output_scale": 1.0, "model.output_offset": 0.0}),
              Arm("heatmap", {"model.head": "heatmap"})),
        budgets={"synthetic": Budget("small", 24, 2140), "mtfl": Budget("small", 18, 3000)}),
    "optim": Study(
        question="Learning rate and schedule: constant vs cosine vs one-cycle; Adam vs AdamW.",
        arms=(Arm("adam-constant"), Arm("lr-x0.33", {"learning_rate": _times(1 / 3)}),
              Arm("lr-x3", {"learning_rate": _times(3.0)}),
              Arm("adam-cosine", {"schedule": "cosine"}),
              Arm("adam-onecycle", {"schedule": "onecycle"}),
              Arm("adamw-cosine", {"optimizer": "adamw", "schedule": "cosine",
                                   "weight_decay": 0.05})),
        budgets={"synthetic": Budget("small", 16, 2140), "mtfl": Budget("small", 11, 3000)}),
    # Studies of accuracy on faces no arm trained on, under robustness perturbations (the
    # heatmap head, the default since the `head` study, in every arm).
    "geometry": Study(
        question="Geometric augmentation (one affine warp per face): none, rotation only, or "
                 "rotation + scale + shift, at two strengths. Does it help on held-out faces "
                 "and under rotations, scalings and shifts?",
        arms=(Arm("none", {"augment.geometry_prob": 0.0, "augment.rotate_deg": 0.0,
                           "augment.scale_range": (1.0, 1.0), "augment.shift_px": 0.0}),
              Arm("rot15", {"augment.geometry_prob": 0.5, "augment.rotate_deg": 15.0,
                            "augment.scale_range": (1.0, 1.0), "augment.shift_px": 0.0}),
              Arm("rot30", {"augment.geometry_prob": 0.5, "augment.rotate_deg": 30.0,
                            "augment.scale_range": (1.0, 1.0), "augment.shift_px": 0.0}),
              Arm("rss-mild", {"augment.geometry_prob": 0.5, "augment.rotate_deg": 15.0,
                               "augment.scale_range": (0.9, 1.1), "augment.shift_px": 4.0}),
              Arm("rss-strong", {"augment.geometry_prob": 0.75, "augment.rotate_deg": 30.0,
                                 "augment.scale_range": (0.8, 1.2), "augment.shift_px": 8.0})),
        budgets={"synthetic": Budget("small", 16, 2140), "mtfl": Budget("small", 14, 3000)},
        common={d: {"model.head": "heatmap", **_NO_EMA_TTA} for d in DATASETS},
        heldout=True, robustness=True),
    "loss": Study(
        question="The training loss on pixel coordinates: MSE (the seed's), L1, or Wing "
                 "(w=10, epsilon=2), with geometric augmentation on.",
        arms=(Arm("mse"), Arm("l1", {"loss": "l1"}), Arm("wing", {"loss": "wing"})),
        budgets={"synthetic": Budget("small", 16, 2140), "mtfl": Budget("small", 14, 3000)},
        common={d: {"model.head": "heatmap", **_GEOMETRY, **_NO_EMA_TTA} for d in DATASETS},
        heldout=True, robustness=True),
    "ema": Study(
        question="A moving average of the parameters (validation, checkpoints and inference "
                 "use it): off, decay 0.999, 0.9999.",
        arms=(Arm("off"), Arm("ema0.999", {"ema_decay": 0.999}),
              Arm("ema0.9999", {"ema_decay": 0.9999})),
        budgets={"synthetic": Budget("small", 16, 2140), "mtfl": Budget("small", 14, 3000)},
        common={d: {"model.head": "heatmap", **_GEOMETRY, **_NO_EMA_TTA} for d in DATASETS},
        heldout=True, robustness=True),
    "head_geometry": Study(
        question="The `head` question again with geometric augmentation on: the seed's dense "
                 "regression vs the heatmap head.",
        arms=(Arm("regression"), Arm("heatmap", {"model.head": "heatmap"})),
        budgets={"synthetic": Budget("small", 16, 2140), "mtfl": Budget("small", 14, 3000)},
        common={d: {**_GEOMETRY, **_NO_EMA_TTA} for d in DATASETS},
        heldout=True, robustness=True),
    "margin": Study(
        question="The heatmap head's maps reaching beyond the 96x96 frame (pixels on each "
                 "side), so that labels off the crop train and can be predicted: 0 (maps end at "
                 "the frame), 8, 16, 32.",
        arms=(Arm("margin0"), Arm("margin8", {"model.heatmap_margin": 8.0}),
              Arm("margin16", {"model.heatmap_margin": 16.0}),
              Arm("margin32", {"model.heatmap_margin": 32.0})),
        budgets={"synthetic": Budget("small", 16, 2140), "mtfl": Budget("small", 14, 3000)},
        common={d: {"model.head": "heatmap", "model.heatmap_margin": 0.0, **_GEOMETRY,
                    **_NO_EMA_TTA} for d in DATASETS},
        heldout=True, robustness=True),
    "defaults": Study(
        question="The old default recipe (heatmap head, no geometric augmentation, MSE, no "
                 "EMA) against the new one (configs/resnet.py), on faces no arm trained on.",
        arms=(Arm("old-default", {"model.head": "heatmap", **_OLD_DEFAULTS}),
              Arm("new-default", {"model.head": "heatmap", **_HEATMAP_UNUSED}),
              Arm("margin16", {"model.head": "heatmap", "model.heatmap_margin": 16.0,
                               **_HEATMAP_UNUSED})),
        budgets={"mtfl": Budget("full", 25, 0)},
        datasets=("mtfl",), heldout=True, robustness=True,
        note="Confirmation at the real budget: the full model, 25 epochs of the 6120-face pool "
             "(run with --set data.val_fraction=0 so that every pool face trains), scored on "
             "the 1530 held-out faces."),
}


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


def budget_config(budget: Budget, dataset: str, train_csv: str, settings) -> Any:
  """configs/resnet.py under a budget, on a data set, with ``--set`` settings (no arm yet)."""
  config = resnet.get_config()
  for path, value in MODELS[budget.model].items():
    set_field(config, path, value)
  config.num_epochs = budget.epochs
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
  return hashlib.sha1(config.to_json(sort_keys=True).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- data


def _write_frame(frame: pd.DataFrame, path: str) -> None:
  """Writes a CSV atomically (a killed run never leaves half a file under the final name)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  workdir_lib.write_csv(path, frame)


def mtfl_subset(path: str, faces: int | None, folder: str) -> str:
  """``path`` itself, or a file of ``faces`` of its rows drawn at random (fixed seed)."""
  if not faces:
    return path
  out = os.path.join(folder, f"mtfl-{faces}.csv")
  if not os.path.exists(out):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if faces > len(frame):
      raise data.DataError(f"{path}: {faces} faces asked for, the file has {len(frame)}")
    keep = np.sort(np.random.default_rng(_SUBSET_SEED).permutation(len(frame))[:faces])
    _write_frame(frame.iloc[keep], out)
  return out


def heldout_files(base, dataset: str, folder: str, val_fraction: float,
                  partial: bool = False) -> tuple[str, str]:
  """Splits the budget's faces once: (training-pool CSV, held-out CSV) under ``folder``.

  Built-in faces are generated with the study's settings (e.g. missing labels); images are
  uint8 in both paths, so the files hold exactly the faces the generator would give. Real
  faces: with ``partial``, the pool loses the mouth corners of ``_MTFL_PARTIAL_SHARE`` of
  its faces.
  """
  d = base.data
  if dataset == "synthetic":
    tag = f"synthetic-{d.synthetic_n}-seed{d.synthetic_seed}" + ("-missing" * d.synthetic_missing)
  else:
    tag = os.path.basename(_stem(d.train_csv)) + ("-partial70" if partial else "")
  pool, held = (os.path.join(folder, f"{tag}-{part}.csv") for part in ("pool", "heldout"))
  if os.path.exists(pool) and os.path.exists(held):
    return pool, held
  if dataset == "synthetic":
    images, coords = synthetic.generate(d.synthetic_n, seed=d.synthetic_seed,
                                        missing=d.synthetic_missing)
    pool_idx, held_idx = data.split(len(images), val_fraction, _HELDOUT_SPLIT_SEED)
    _write_frame(synthetic.to_frame(images[held_idx], coords[held_idx]), held)
    _write_frame(synthetic.to_frame(images[pool_idx], coords[pool_idx]), pool)
    return pool, held
  frame = pd.read_csv(d.train_csv, dtype=str, keep_default_na=False)
  pool_idx, held_idx = data.split(len(frame), val_fraction, _HELDOUT_SPLIT_SEED)
  pool_frame = frame.iloc[np.sort(pool_idx)].copy()
  if partial:
    rows = np.random.default_rng(_HELDOUT_SPLIT_SEED).random(len(pool_frame)) < _MTFL_PARTIAL_SHARE
    drop = [f"{name}_{axis}" for name in _MTFL_PARTIAL_DROPS for axis in "xy"]
    pool_frame.loc[rows, drop] = ""
  _write_frame(frame.iloc[np.sort(held_idx)], held)
  _write_frame(pool_frame, pool)
  return pool, held


# ----------------------------------------------------------------------------- runs


def run_one(config, workdir: str, heldout_csv: str | None, robustness: bool = False) -> dict:
  """Trains (or resumes) one run and returns its record; a finished run is only read."""
  done = os.path.join(workdir, "ablate.json")
  if os.path.exists(done):
    with open(done) as f:
      return dict(json.load(f), skipped=True)
  t0 = time.time()
  results = train.train_and_evaluate(config, workdir)
  record = {k: results.get(k) for k in ("val_rmse", "val_nme", "mean_shape_val_rmse", "steps",
                                        "num_train", "num_val", "source")}
  record["rmse"], record["nme"] = results.get("val_rmse"), results.get("val_nme")
  if heldout_csv:
    # The final state, as the validation numbers above; read-only restore of the latest save.
    model = inference.load(workdir, "latest")
    record.update(_heldout_scores(model, heldout_csv, config.tta, robustness))
    if config.ema_decay:  # The same run's raw weights, beside its moving average.
      raw = dataclasses.replace(model, state=model.state.replace(ema_params=None))
      record["rmse_raw_weights"] = _heldout_scores(raw, heldout_csv, config.tta, False)["rmse"]
  record["wall_seconds"] = time.time() - t0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    epochs = [json.loads(line)["epoch_seconds"] for line in f if line.strip()]
  # The median epoch leaves out the first epoch's compilation and the run's fixed costs.
  record["epoch_seconds"] = float(np.median(epochs)) if epochs else None
  workdir_lib.write_json(done, record)
  return dict(record, skipped=False)


def _heldout_scores(model, heldout_csv: str, tta: bool, robustness: bool) -> dict:
  """RMSE, NME, counts, and (``robustness``) the perturbations' RMSE and ratios."""
  scores, _, _ = evaluate.evaluate(model, heldout_csv, tta=tta, perturbed=robustness)
  out = {"rmse": scores["rmse"], "nme": scores["nme"], "fr": scores["fr_0.10"],
         "auc": scores["auc_0.10"], "heldout_count": scores["count"],
         "heldout_faces": scores["num_faces"]}
  if robustness:
    r = scores["robustness"]
    out["robustness"] = {name: m["rmse"] for name, m in r["perturbations"].items()}
    out.update({f"ratio_{group}": value for group, value in r["groups"].items()})
  return out


def _mean_sd(values) -> tuple[float | None, float | None]:
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
      s[f"{key}_mean"], s[f"{key}_sd"] = _mean_sd([r.get(key) for r in done])
    diffs = [r["rmse"] - ref[r["seed"]] for r in done if r["seed"] in ref]
    s["paired_rmse_diff_mean"], s["paired_rmse_diff_sd"] = _mean_sd(diffs)
    s["paired_n"] = len(diffs)
    arm["summary"] = s


_RATIO_COLUMNS = ("rot+-20", "rot+-30", "scale0.85", "scale1.15", "shift+-6")


def _fmt(mean, sd, digits) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _fmt_value(v) -> str:
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
      + "".join(f"; `{k}={_fmt_value(v)}`" for k, v in result["settings"].items())
      + "".join(f"; every arm: `{k}={_fmt_value(v)}`" for k, v in result["common"].items()),
      f"- scored on {scored}; errors in pixels of the 96x96 image",
      f"- command: `{result['command']}`", "",
      f"| arm | overrides | RMSE (px) | NME | Δ RMSE vs {ref} (paired) | s/epoch | wall s/run "
      "| seeds |" + "".join(f" {g} ratio |" for g in _RATIO_COLUMNS) * result["robustness"],
      "|---|---|---|---|---|---|---|---|" + "---|" * len(_RATIO_COLUMNS) * result["robustness"]]
  for arm in arms:
    s = arm["summary"]
    overrides = ", ".join(f"`{k}={_fmt_value(v)}`" for k, v in arm["overrides"].items()) or "—"
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
              "frame are not scored (facekp_jax/robustness.py)."]
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
    baseline = _mean_sd([a["summary"]["mean_shape_val_rmse_mean"] for a in arms])[0]
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
      mean, sd = _mean_sd(values)
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
              log=print) -> dict:
  """Runs (or finishes) every arm x seed of a study and writes its table, plot and JSON.

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
  base = budget_config(budget, dataset, train_csv, settings)
  if not study.robustness:  # The earlier studies ran before these defaults: their recipe.
    _apply(base, _OLD_DEFAULTS)
  shared = arm_config(base, study, dataset, Arm("common"), 0)[0]  # The study's common settings.
  heldout_csv = None
  if study.heldout:
    pool, heldout_csv = heldout_files(shared, dataset, data_dir, _HELDOUT_FRACTION,
                                      partial=study.partial_labels)
    base.data.train_csv = pool
    heldout_baseline = _mean_shape_rmse(pool, heldout_csv)
  configs = {(a.name, s): arm_config(base, study, dataset, a, s) for a in chosen for s in seeds}
  for config, _ in configs.values():  # A bad setting fails here, before any run starts.
    train.check_config(config, jax.device_count())
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
      workdir = _same_run(scratch, dataset, seed, config, study.robustness) or workdir
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
  summarise(results["arms"])
  folder = os.path.join(out, name, dataset)
  os.makedirs(folder, exist_ok=True)
  workdir_lib.write_json(os.path.join(folder, "results.json"), workdir_lib.jsonable(results))
  with open(os.path.join(folder, "table.md"), "w") as f:
    f.write(markdown(results))
  plots.save_figure(plot(results), os.path.join(folder, "rmse_nme.png"))
  log(f"wrote {folder}/table.md, rmse_nme.png, results.json")
  return results


def _same_run(scratch: str, dataset: str, seed: int, config, robustness: bool) -> str | None:
  """A finished run (of any study) that trained this very config and seed, hence the same
  data, held-out faces and model, and whose record has the scores this study needs.

  Configs compare as a workdir reads them (``config_upgrade``: a field added since the run
  means what the run did), so new config fields do not orphan finished runs.
  """
  want = config_upgrade.upgrade(json.loads(config.to_json()))
  for done in sorted(glob.glob(os.path.join(scratch, "*", dataset, "*", f"seed{seed}-*",
                                            "ablate.json"))):
    folder = os.path.dirname(done)
    try:
      with open(done) as f:
        record = json.load(f)
      with open(os.path.join(folder, "config.json")) as f:
        saved = config_upgrade.upgrade(json.load(f))
    except (OSError, ValueError):
      continue
    if saved == want and "rmse" in record and (not robustness or "ratio_rot+-20" in record):
      return folder
  return None


def _mean_shape_rmse(train_csv: str, test_csv: str) -> float:
  """RMSE on ``test_csv`` of the mean of each coordinate over ``train_csv`` (labels only)."""
  pool, held = (pd.read_csv(p, usecols=list(keypoints.COLUMNS)).to_numpy(np.float64)
                for p in (train_csv, test_csv))
  with warnings.catch_warnings():  # Columns no face labels (real faces: 10 of 30) stay NaN.
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.nanmean(pool, axis=0)
  return float(np.sqrt(np.nanmean(np.square(held - mean))))


def _source(base, dataset: str, mtfl_csv: str, partial: bool = False) -> str:
  """The data set in words, for the table."""
  if dataset == "mtfl":
    return (f"real faces of {os.path.basename(mtfl_csv)}, 5 of 15 keypoints, masked loss" +
            (f"; {_MTFL_PARTIAL_SHARE:.0%} of the training faces without mouth corners"
             if partial else ""))
  return "built-in synthetic faces" + (", Kaggle's missing-label pattern"
                                       if base.data.synthetic_missing else "")


# ----------------------------------------------------------------------------- command line


def _seeds(text: str) -> list[int]:
  """"3" -> [0, 1, 2]; "0,4,7" -> [0, 4, 7]."""
  if "," in text:
    return [int(s) for s in text.split(",") if s.strip()]
  return list(range(int(text)))


def describe() -> str:
  lines = []
  for name, study in STUDIES.items():
    lines.append(f"{name}: {study.question}")
    for arm in study.arms:
      for dataset in study.datasets:
        overrides = ", ".join(f"{k}: {v.description}" if callable(v) else f"{k}={_fmt_value(v)}"
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
  parser = argparse.ArgumentParser(
      prog="python experiments/ablate.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--study", choices=sorted(STUDIES))
  parser.add_argument("--list", action="store_true", help="describe the studies and exit")
  parser.add_argument("--dataset", choices=DATASETS, default="synthetic")
  parser.add_argument("--seeds", type=_seeds, default=_seeds("3"),
                      help="a count (3: seeds 0,1,2) or a comma list")
  parser.add_argument("--arms", help="comma list: run only these arms (the first is the "
                      "reference of the paired difference)")
  parser.add_argument("--model", choices=sorted(MODELS), help="model size (default: the study's)")
  parser.add_argument("--epochs", type=int, help="epochs per run (default: the study's)")
  parser.add_argument("--faces", type=int, help="built-in faces to generate, or real faces to "
                      "sample from the file; 0: every face of the file (default: the study's)")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="any config override for every run, e.g. --set batch_size=16")
  parser.add_argument("--scratch", default=DEFAULT_SCRATCH, help="run workdirs (outside the repo)")
  parser.add_argument("--out", default=DEFAULT_OUT, help="where tables, plots and JSON go")
  parser.add_argument("--mtfl_csv", default=MTFL_CSV)
  parser.add_argument("--compile_cache", default=None, metavar="DIR",
                      help="JAX's persistent compilation cache, shared by the runs (default: "
                      "SCRATCH/jax_cache; '' turns it off)")
  parser.add_argument("--verbose", action="store_true", help="the runs' own per-epoch log lines")
  args = parser.parse_args(argv)
  if args.list:
    print(describe())
    return None
  if not args.study:
    parser.error("--study is required (or --list)")
  study = STUDIES[args.study]
  if args.dataset not in study.budgets:
    parser.error(f"study {args.study!r} does not apply to {args.dataset}: {study.note}")
  proposed = study.budgets[args.dataset]
  budget = Budget(model=args.model or proposed.model, epochs=args.epochs or proposed.epochs,
                  faces=proposed.faces if args.faces is None else (args.faces or None))
  try:
    settings = [parse_setting(s) for s in args.set]
  except ValueError as e:
    parser.error(str(e))
  scratch = os.path.realpath(args.scratch)
  if scratch == ROOT or scratch.startswith(ROOT + os.sep):
    parser.error(f"--scratch {args.scratch} is inside the repository; checkpoints must stay out")
  if not args.verbose:
    cli.quiet_libraries()
  cache = os.path.join(scratch, "jax_cache") if args.compile_cache is None else args.compile_cache
  if cache:  # Arms that share a model (and seed) then compile it once, not once per run.
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  command = " ".join(["python experiments/ablate.py"] + list(
      sys.argv[1:] if argv is None else argv))
  print(f"study {args.study} on {args.dataset}: {budget}, seeds {args.seeds}")
  try:
    return run_study(args.study, args.dataset, budget, args.seeds, settings=settings,
                     arms=args.arms.split(",") if args.arms else None, scratch=args.scratch,
                     out=args.out, mtfl_csv=args.mtfl_csv, command=command)
  except (data.DataError, train.ConfigError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except interrupts.Interrupted as e:
    print(f"{e} (finished runs are kept; the same command skips them)", file=sys.stderr)
    sys.exit(128 + e.signum)


if __name__ == "__main__":
  main()

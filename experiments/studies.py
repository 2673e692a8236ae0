"""The ablation studies as data: model sizes, budgets, arms of config overrides, questions.

Each study is a question and a list of arms; an arm is a set of config overrides of
configs/resnet.py (``field: value``, or ``field: Relative`` for changes computed from the
budgeted config, such as "twice the filters"). ``experiments/ablate.py`` runs them
(``python -m experiments.ablate --list`` describes them all).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

import pandas as pd

from configs import tiny
from facekp_jax.core import files, keypoints
from facekp_jax.training import config as config_lib

DATASETS = ("synthetic", "mtfl")


def csv_stem(path: str) -> str:
  """``path`` without a ``.csv`` / ``.csv.gz`` ending."""
  return re.sub(r"(\.csv)?(\.gz)?$", "", path)


def write_frame(frame: pd.DataFrame, path: str) -> None:
  """Writes a CSV atomically (a killed run never leaves half a file under the final name)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_csv(path, frame)


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
      (``facekp_jax/serving/robustness.py``); the table gives the RMSE ratios.
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


def _complete_rows_file(config) -> str:
  """A copy of ``config.data.train_csv`` with only its complete rows: every labelled column.

  Real faces label 5 of the 15 keypoints, so ``data.rows="complete"`` (all 30 values) keeps
  none of them; "complete" here means every column the file labels anywhere.
  """
  path = config.data.train_csv
  out = csv_stem(path) + "-complete.csv"
  if not os.path.exists(out):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    cells = frame[list(keypoints.KAGGLE.columns)].apply(lambda c: c.str.strip() != "")
    labelled = cells.any(axis=0)
    write_frame(frame[cells.loc[:, labelled].all(axis=1)], out)
  return out


# Real faces with missing labels (study ``rows``): Kaggle's training.csv has all 15 keypoints in
# 2140 of 7049 rows; the other 70 % keep 4 (eye centres, nose tip, bottom lip), losing the mouth
# corners among others. MTFL labels eye centres, nose tip and mouth corners, so the same share of
# its training faces loses the mouth corners (held-out faces keep all 5 points, for scoring).
MTFL_PARTIAL_SHARE = 4909 / 7049
MTFL_PARTIAL_DROPS = ("mouth_left_corner", "mouth_right_corner")


# The geometric augmentation the accuracy studies share (study `geometry`'s winner), and the
# defaults before them (for study `defaults`).
_GEOMETRY = {"augment.geometry_prob": 0.75, "augment.rotate_deg": 30.0,
             "augment.scale_range": (0.8, 1.2), "augment.shift_px": 8.0}
# The screens score one weight set without TTA, and keep the unit-scaled regression outputs
# their runs had (configs/resnet.py now trains the regression head on raw pixels; the heatmap
# head ignores both fields).
_NO_EMA_TTA = {"ema_decay": 0.0, "tta": False, "tta_rotations": (), "model.output_scale": 48.0,
               "model.output_offset": 48.0, "model.heatmap_stages": 1}
_HEATMAP_UNUSED = {"model.output_scale": 48.0, "model.output_offset": 48.0}  # As its run had.
_FLIP_TTA = {"tta_rotations": ()}  # Scored as the default scored before its turned views.
# The recipe before the accuracy studies: each field whose value from before it existed
# (``training.config.LEGACY``) is not today's default at that value (a field added later is
# pinned to its old behaviour by itself), but the head (the old default arm trains the
# heatmap head), scored as the screens are.
_TODAY = config_lib.defaults()
OLD_DEFAULTS = {**{k: v for k, v in config_lib.LEGACY.items()
                   if k != "model.head" and v != config_lib.value(_TODAY, k)}, **_NO_EMA_TTA}
# The optimizer recipe every study ran with (configs/resnet.py's until issue 27 made the main
# job's schedule one-cycle): pinned under every study (``ablate.budget_config``), so that their
# finished runs stay theirs; a model size's own rate (small, tiny) still wins; study `schedule`
# compares it with today's.
STUDY_RECIPE = {"schedule": "constant", "learning_rate": 1e-4, "batch_size": 32,
                "warmup_epochs": 0.0}
# The loss and map levels every study ran with (configs/resnet.py's until issue 26 made the
# default wing, the map loss at weight 3 and three levels): pinned beside ``STUDY_RECIPE``.
STUDY_LOSS = {"loss": "mse", "heatmap_loss": 0.0, "model.heatmap_stages": 2}
STUDY_PINNED = {**STUDY_RECIPE, **STUDY_LOSS}  # Both: what every study ran under.


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
    "stages": Study(
        question="Which stages feed the heatmap head: the last (the seed's 5x5 map) or the last "
                 "two (the 11x11 stage too, its logits added to the upsampled coarse ones)?",
        arms=(Arm("last"), Arm("last-two", {"model.heatmap_stages": 2})),
        budgets={"synthetic": Budget("small", 16, 2140), "mtfl": Budget("small", 14, 3000)},
        common={d: {"model.head": "heatmap", "model.heatmap_margin": 0.0,
                    "model.heatmap_stages": 1, **_GEOMETRY, **_NO_EMA_TTA} for d in DATASETS},
        heldout=True, robustness=True),
    "defaults": Study(
        question="The old default recipe (heatmap head, no geometric augmentation, MSE, no "
                 "EMA) against the new one (configs/resnet.py, its test-time views too), and "
                 "what might still improve it (a decaying schedule, the stem's finer map), on "
                 "faces no arm trained on.",
        arms=(Arm("old-default", {"model.head": "heatmap", **OLD_DEFAULTS}),
              Arm("new-default", {"model.head": "heatmap", **_HEATMAP_UNUSED}),
              # The same runs scored with flip TTA only (the default before tta_rotations), as
              # the arms below are: their training differs, their scoring does not.
              Arm("flip-tta-only", {"model.head": "heatmap", **_FLIP_TTA, **_HEATMAP_UNUSED}),
              Arm("last-stage-only", {"model.head": "heatmap", "model.heatmap_stages": 1,
                                      **_FLIP_TTA, **_HEATMAP_UNUSED}),
              Arm("margin16", {"model.head": "heatmap", "model.heatmap_margin": 16.0,
                               "model.heatmap_stages": 1, **_FLIP_TTA, **_HEATMAP_UNUSED}),
              # The optim study's small-model budgets were too short to judge a decay (every
              # MTFL arm near the mean face); at the real budget the EMA and a decay may add up.
              Arm("cosine", {"model.head": "heatmap", "schedule": "cosine", **_FLIP_TTA,
                             **_HEATMAP_UNUSED}),
              Arm("lr3e-4-cosine", {"model.head": "heatmap", "schedule": "cosine",
                                    "learning_rate": 3e-4, "warmup_epochs": 1.0, **_FLIP_TTA,
                                    **_HEATMAP_UNUSED}),
              # A third, finer level: the stem's 23x23 map (2 px cells need finer features).
              Arm("stem-level", {"model.head": "heatmap", "model.heatmap_stages": 3,
                                 **_FLIP_TTA, **_HEATMAP_UNUSED})),
        budgets={"mtfl": Budget("full", 25, 0)},
        datasets=("mtfl",), heldout=True, robustness=True,
        note="Confirmation at the real budget: the full model, 25 epochs of the 6120-face pool "
             "(run with --set data.val_fraction=0 so that every pool face trains), scored on "
             "the 1530 held-out faces."),
    "schedule": Study(
        question="Do the main job's fast recipes (issue 27: a one-cycle schedule peaking at "
                 "4e-3, at batch 64, then at batch 16 with a short rise, chosen on the built-in "
                 "faces and for time to accuracy) hold on real faces at the real budget, "
                 "against the recipe every study ran (constant Adam 1e-4 at batch 32)?",
        arms=(Arm("constant", {"model.head": "heatmap", **_HEATMAP_UNUSED}),
              # The main job's recipe of 2026-12-06 (20 epochs at batch 64 on built-in faces).
              Arm("onecycle", {"model.head": "heatmap", **_HEATMAP_UNUSED,
                               "schedule": "onecycle", "learning_rate": 4e-3,
                               "batch_size": 64, "warmup_epochs": 0.0}),
              # Today's (configs/resnet.py): batch 16, the rise over a tenth of an epoch.
              Arm("onecycle-b16", {"model.head": "heatmap", **_HEATMAP_UNUSED, **{
                  k: config_lib.value(_TODAY, k) for k in STUDY_RECIPE}}),
              # Today's with the wing loss (issue 26: it won cross_source's first seed both
              # ways; study 9 found it less robust to turns on the small model).
              Arm("onecycle-b16-wing", {"model.head": "heatmap", **_HEATMAP_UNUSED, **{
                  k: config_lib.value(_TODAY, k) for k in STUDY_RECIPE}, "loss": "wing"}),
              # Today's whole recipe (issue 26's default: wing, the map loss at weight 3, the
              # stem's level: the best both ways across sources in cross_source.py).
              Arm("today", {"model.head": "heatmap", **_HEATMAP_UNUSED, **{
                  k: config_lib.value(_TODAY, k) for k in (*STUDY_RECIPE, *STUDY_LOSS)}})),
        budgets={"mtfl": Budget("full", 25, 0)},
        datasets=("mtfl",), heldout=True, robustness=True,
        note="The protocol of study `defaults` (run with --set data.val_fraction=0): its "
             "reference arm is the same run as that study's new-default."),
}

"""The config's fields, each declared once: its default, its check, its value in old workdirs.

``FIELDS`` declares every field of a run's config: its default (``defaults()`` builds the
config that configs/resnet.py returns), what it means (one line), the check of its values, and
its value in workdirs written before the field existed (``legacy``). A field added later means
"what the project did before": the seed's dense head before ``model.head``, no geometric
augmentation before ``augment.geometry_prob``; that is not always its default (the head's
default is now the heatmap). ``upgrade`` fills exactly those values into a saved config, so
evaluating, predicting from or resuming an old run does what that run did, and code reads
``config.model.head`` directly. ``check_config`` runs every field's check and the rules that
join several fields (``RULES``), before any data is read or file written. Adding a field is
one entry here, plus its use. The evidence behind the defaults is in experiments/README.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from facekp_jax.core import keypoints
from facekp_jax.core.errors import ConfigError, WorkdirError
from facekp_jax.data import dataset, kaggle
from facekp_jax.model import losses, resnet, tta
from facekp_jax.training import optim

_ALWAYS = object()  # ``legacy`` of a field every saved config has.


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: dotted ``name``, ``default``, one-line ``doc``, ``check(value)`` -> the
  problem (a message without the field's name) or None, and ``legacy``: its value in workdirs
  written before it existed."""

  name: str
  default: Any
  doc: str
  check: Callable[[Any], str | None] | None = None
  legacy: Any = _ALWAYS
  # Added after experiments began naming runs by a hash of their config: left out of
  # ``identity`` at its legacy value, so that earlier runs keep their names.
  late: bool = False


def _one_of(choices) -> Callable:
  return lambda v: None if v in choices else f"must be one of {list(choices)}, got {v!r}"


def _at_least(low) -> Callable:
  return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def _positive(v):
  return None if v > 0 else f"must be > 0, got {v}"


def _unit(v):
  return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


def _probability(v):
  return None if 0.0 <= v <= 1.0 else f"must be in [0, 1], got {v}"


def _between(low, high) -> Callable:
  return lambda v: None if low <= v <= high else f"must be in [{low:g}, {high:g}], got {v}"


def _range(v):
  low, high = v
  return None if 0 < low <= high else f"must be 0 < low <= high, got {(low, high)}"


def _tta_rotations(v):
  problems = tta.problems(v)
  return problems[0].removeprefix("tta_rotations ") if problems else None


FIELDS: tuple[Field, ...] = (
    Field("seed", 0, "the root of every random draw: initialisation, split, sampler"),
    Field("init_from", "", "a workdir, packed model or 'shipped' whose weights start the run "
          "(fine-tuning: training/weights.py)", legacy=""),
    Field("num_epochs", 12, "passes over the training split (the schedule spans them)",
          _at_least(1)),
    Field("batch_size", 16, "faces per step, over all devices (RULES: a multiple of them)"),
    Field("eval_batch_size", 128, "faces per evaluation call at most", _at_least(1)),
    Field("learning_rate", 4e-3, "the peak rate of any schedule", _positive),
    Field("optimizer", "adam", "adam, or adamw (decoupled decay of kernels only)",
          _one_of(optim.OPTIMIZERS), legacy="adam"),
    Field("adam_eps", 1e-8, "Adam's epsilon: optax's default; Keras' Adam uses 1e-7",
          legacy=1e-8),
    Field("weight_decay", 1e-4, "AdamW only; optax scales it by the learning rate",
          _at_least(0), legacy=1e-4),
    Field("schedule", "onecycle", "constant, cosine or onecycle (training/optim.py)",
          _one_of(optim.SCHEDULES), legacy="constant"),
    Field("warmup_epochs", 0.1, "linear warm-up; onecycle: its rise (0: 30 % of the run)",
          legacy=0.0),
    Field("half_precision", False, "bfloat16 compute (accelerators; 2.5x slower on a CPU)"),
    Field("input_on_device", False, "keep the training split on the devices and augment "
          "there (the same batches as the host pipeline)", legacy=False),
    Field("steps_per_call", 1, "with input_on_device: steps per compiled call (lax.scan)",
          _at_least(1), legacy=1),
    Field("checkpoint_every_steps", 0, "0: a checkpoint at the end of every epoch only",
          _at_least(0)),
    Field("keep_checkpoints", 2, "the last ones kept, plus the best by validation RMSE",
          _at_least(1)),
    Field("tta", True, "evaluation (final, evaluate, predict, export) averages a face's views",
          legacy=False),
    Field("tta_rotations", (10.0,), "with tta, also the views turned by -a and +a degrees, "
          "each angle four more passes (model/tta.py)", _tta_rotations, legacy=()),
    Field("loss", "wing", "the training loss on pixels (model/losses.py); figures stay in px",
          _one_of(losses.LOSSES), legacy="mse"),
    Field("smooth_l1_beta", 1.0, "px: smooth_l1 is quadratic below, linear above", _positive,
          legacy=1.0),
    Field("wing_w", 10.0, "px: the wing loss's log region's width", legacy=10.0),
    Field("wing_epsilon", 2.0, "px: the wing loss's log region's curvature", legacy=2.0),
    Field("heatmap_loss", 3.0, "heatmap head: weight of its maps' KL divergence from a Gaussian "
          "at each label (model/losses.py; 0: off)", _at_least(0.0),
          legacy=0.0, late=True),
    Field("heatmap_loss_sigma", 2.0, "px: that Gaussian's standard deviation", _positive,
          legacy=2.0, late=True),
    Field("ema_decay", 0.999, "parameter EMA (0: off); what validation, checkpoints' scores, "
          "evaluate, predict and export use", _unit, legacy=0.0),
    Field("data.train_csv", "", "a CSV of a layout's columns and Image, or a folder of .pts "
          "faces; empty: the built-in faces"),
    Field("data.keypoints", "", "the keypoint layout (core/keypoints.py); '': the data's own "
          "(the built-in faces: kaggle15)", keypoints.problem, legacy=keypoints.KAGGLE.name),
    Field("data.rows", "all", "all (missing values masked out of the loss) or complete "
          "(every keypoint labelled, the seed's choice)", dataset.rows_problem),
    Field("data.val_fraction", 0.2, "the validation split (0: a final fit on every face)",
          _unit),
    Field("data.val_csv", "", "validation faces of their own (CSV or .pts folder, the "
          "training layout) instead of a split; needs val_fraction=0", legacy=""),
    Field("data.bad_labels", "error", "a coordinate over 48 px outside the image: error, mask "
          "it, or drop its row", _one_of(kaggle.BAD_LABELS), legacy="error"),
    Field("data.seed_copies", False, "the seed's fixed offline copies (training split only)"),
    Field("data.flip_copies", False, "mirrored copies (label swap) added once, as Keras did",
          legacy=False),
    Field("data.synthetic_n", 2140, "built-in faces: as many as Kaggle's complete rows"),
    Field("data.synthetic_seed", 0, "built-in faces: the generator's seed"),
    Field("data.synthetic_missing", False, "built-in faces: Kaggle's missing-label pattern"),
    Field("augment.hflip_prob", 0.5, "a horizontal flip (left/right labels swapped)",
          _probability),
    Field("augment.hflip_swap", True, "False reproduces the seed's fault (labels unswapped)"),
    Field("augment.vflip_prob", 0.0, "a vertical flip (faces are upright: off)", _probability),
    Field("augment.brightness_prob", 0.5, "a brightness factor", _probability),
    Field("augment.brightness_range", (0.8, 1.25), "its factors", _range),
    Field("augment.geometry_prob", 0.75, "one affine warp per face (core/geometry.py)",
          _probability, legacy=0.0),
    Field("augment.rotate_deg", 30.0, "the warp's rotation in [-a, a] degrees",
          _between(0, 180), legacy=0.0),
    Field("augment.scale_range", (0.8, 1.2), "the warp's scale about the frame centre", _range,
          legacy=(1.0, 1.0)),
    Field("augment.shift_px", 8.0, "the warp's shift per axis, at most",
          _between(0, keypoints.IMAGE_SIZE / 2), legacy=0.0),
    # Out-of-plane pose and the camera (issue 26): all off unless a config asks.
    Field("augment.squeeze_range", (1.0, 1.0), "the warp's horizontal scale of the upright "
          "face before turning it (a turn about its vertical axis, roughly; 1: none)", _range,
          legacy=(1.0, 1.0)),
    Field("augment.contrast_prob", 0.0, "a contrast factor about the image's mean",
          _probability, legacy=0.0),
    Field("augment.contrast_range", (0.6, 1.4), "its factors", _range, legacy=(0.6, 1.4)),
    Field("augment.gamma_prob", 0.0, "a gamma curve", _probability, legacy=0.0),
    Field("augment.gamma_range", (0.67, 1.5), "its exponents (log-uniform)", _range,
          legacy=(0.67, 1.5)),
    Field("augment.blur_prob", 0.0, "a Gaussian blur", _probability, legacy=0.0),
    Field("augment.blur_sigma", 1.5, "its sigma, uniform in [0, s] px (the 7-tap kernel's "
          "reach)", _between(0, 1.5), legacy=1.5),
    Field("augment.noise_prob", 0.0, "additive Gaussian noise", _probability, legacy=0.0),
    Field("augment.noise_std", 0.05, "its standard deviation, uniform in [0, s] (pixels in "
          "[0, 1])", _between(0, 1), legacy=0.05),
    Field("augment.occlude_prob", 0.0, "a grey patch over part of the face (labels kept)",
          _probability, legacy=0.0),
    Field("augment.occlude_size", (0.15, 0.4), "its sides, uniform shares of the frame",
          lambda v: _range(v) or (None if v[1] <= 1 else f"must be at most 1, got {v[1]}"),
          legacy=(0.15, 0.4)),
    Field("model.stage_filters", ((64, 64, 256), (128, 128, 512)), "each stage's bottleneck "
          "filters"),
    Field("model.stage_blocks", (3, 3), "each stage's residual blocks"),
    Field("model.stem_filters", 64, "the stem's filters"),
    Field("model.dense_sizes", (4096, 2048), "regression head: its dense layers"),
    Field("model.dropout_rates", (0.2, 0.1), "regression head: each dense layer's dropout",
          lambda v: None if all(0.0 <= r < 1.0 for r in v)
          else f"must be in [0, 1), got {tuple(v)}"),
    Field("model.head", "heatmap", "heatmap (maps + soft-argmax, model/heads.py) or "
          "regression (the seed's dense layers)", _one_of(resnet.HEADS), legacy="regression"),
    Field("model.heatmap_size", 48, "heatmap head: cells of its maps across the frame (2 px)",
          legacy=48),
    Field("model.heatmap_margin", 0.0, "heatmap head: pixels its maps reach beyond the frame "
          "(whole cells)", legacy=0.0),
    Field("model.heatmap_stages", 3, "heatmap head: how many of the last feature levels feed "
          "its maps (the stem's counts: 3 with two stages)",
          legacy=1),
    Field("model.output_activation", "linear", "regression head only: linear, or the seed's "
          "relu", _one_of(sorted(resnet.OUTPUT_ACTIVATIONS))),
    Field("model.output_scale", 1.0, "regression head: outputs map to pixels by y * scale + "
          "offset; raw pixels (1, 0), as Keras"),
    Field("model.output_offset", 0.0, "regression head: see output_scale"),
    Field("model.conv_bias", True, "convolutions carry a bias, as Keras'"),
    Field("model.kernel_init", "lecun_normal", "lecun_normal, or glorot_uniform (Keras')",
          _one_of(list(resnet.KERNEL_INITS)), legacy="lecun_normal"),
    Field("model.fast_ops", True, "the same function and parameters, faster on a CPU "
          "(model/ops)"),
)

# Dotted field -> its value before the field existed (behaviour unchanged by the field).
LEGACY: dict[str, object] = {f.name: f.legacy for f in FIELDS if f.legacy is not _ALWAYS}


def defaults() -> ml_collections.ConfigDict:
  """A config holding every field's default (configs/resnet.py's)."""
  config = ml_collections.ConfigDict()
  for f in FIELDS:
    *parents, name = f.name.split(".")
    node = config
    for parent in parents:
      if parent not in node:
        node[parent] = ml_collections.ConfigDict()
      node = node[parent]
    node[name] = f.default
  return config


def upgrade(saved: dict) -> dict:
  """A copy of a saved config (plain dict) with every ``LEGACY`` field it lacks filled in."""
  out = copy.deepcopy(saved)
  for dotted, value in LEGACY.items():
    *parents, name = dotted.split(".")
    node = out
    for parent in parents:
      node = node.get(parent)
      if not isinstance(node, dict):
        break
    else:
      node.setdefault(name, value)
  return out


def _tuples(value):
  """JSON gives lists where the config had tuples: turn them back (recursively)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def identity(config) -> str:
  """``config`` as sorted JSON without its ``late`` fields that are at their legacy value:
  what names a run (``experiments/ablate.config_hash``). Such a field does what the project
  did before it existed, so a config with it is the same run as one from before."""
  plain = config.to_dict()
  for f in FIELDS:
    if f.late and value(config, f.name) == f.legacy:
      node = plain
      *parents, last = f.name.split(".")
      for part in parents:
        node = node[part]
      del node[last]
  return json.dumps(plain, sort_keys=True, default=list)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (``config.json``), tuples restored.

  Raises:
    WorkdirError: no readable ``config.json``.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} does not exist: give the workdir of a training (or a "
                       "packed model)")
  if not os.path.isfile(path):
    what = ("is a folder" if os.path.isdir(path) else "is a dangling symbolic link"
            if os.path.islink(path) else "is missing")
    raise WorkdirError(f"workdir {workdir}: its config.json {what}: give the workdir of a "
                       "training (or a packed model), or restore its config.json")
  return ml_collections.ConfigDict(_tuples(upgrade(saved_config(workdir))))


def saved_config(workdir: str) -> dict:
  """``workdir/config.json`` as saved (a JSON object, not upgraded).

  Raises:
    WorkdirError: it cannot be read, is not JSON, or is JSON of another shape than a config.
  """
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"workdir {workdir}: cannot read config.json "
                       f"({getattr(e, 'strerror', None) or e}); it is damaged: restore it, or "
                       "use another --workdir") from None
  if not isinstance(saved, dict) or not all(
      isinstance(saved.get(k, {}), dict) for k in ("data", "model", "augment")):
    raise WorkdirError(f"workdir {workdir}: config.json does not hold a config; it is damaged: "
                       "restore it, or use another --workdir")
  return saved


def _model_problems(config, num_devices: int) -> list[str]:
  """The rules joining several ``model`` fields (each field's own check is in ``FIELDS``)."""
  m, problems = config.model, []
  if m.head == "heatmap" and m.output_activation != "linear":
    problems.append("model.output_activation applies to the regression head only; use "
                    "'linear' with model.head='heatmap'")
  if len(m.stage_filters) != len(m.stage_blocks):
    problems.append("model.stage_filters and model.stage_blocks must have the same length")
  if len(m.dense_sizes) != len(m.dropout_rates):
    problems.append("model.dense_sizes and model.dropout_rates must have the same length")
  counts = [m.heatmap_size, m.stem_filters, *m.stage_blocks, *m.dense_sizes,
            *(f for stage in m.stage_filters for f in stage)]
  if not all(isinstance(c, int) and c >= 1 for c in counts):
    problems.append("model.heatmap_size, stem_filters, stage_filters, stage_blocks and "
                    "dense_sizes must be whole numbers >= 1")
  levels = len(m.stage_blocks) + 1  # The stem's map and each stage's.
  if m.head == "heatmap" and not (isinstance(m.heatmap_stages, int)
                                  and 1 <= m.heatmap_stages <= levels):
    problems.append(f"model.heatmap_stages must be a whole number from 1 to the number of "
                    f"stages + 1 for the stem ({levels}), got {m.heatmap_stages!r}")
  cells = m.heatmap_margin * m.heatmap_size / keypoints.IMAGE_SIZE
  if not (m.heatmap_margin >= 0 and abs(cells - round(cells)) < 1e-6):
    problems.append(f"model.heatmap_margin must be a whole number >= 0 of cells of "
                    f"{keypoints.IMAGE_SIZE}/heatmap_size px, got {m.heatmap_margin}")
  return problems


def _batch_problems(config, num_devices: int) -> list[str]:
  if config.batch_size < 1 or config.batch_size % num_devices:
    return [f"batch_size {config.batch_size} does not divide evenly over {num_devices} "
            f"devices; use a multiple of {num_devices}"]
  return []


def _schedule_problems(config, num_devices: int) -> list[str]:
  if not 0 <= config.warmup_epochs < max(config.num_epochs, 1):
    return [f"warmup_epochs must be in [0, num_epochs={config.num_epochs}), "
            f"got {config.warmup_epochs}"]
  return []


def _wing_problems(config, num_devices: int) -> list[str]:
  if not config.wing_w > 0 or not config.wing_epsilon > 0:
    return [f"wing_w and wing_epsilon must be > 0, got {config.wing_w}, {config.wing_epsilon}"]
  return []


def _layout_problems(config, num_devices: int) -> list[str]:
  d = config.data
  if d.train_csv or keypoints.problem(d.keypoints):
    return []
  if not set(keypoints.get(d.keypoints).names) <= set(keypoints.KAGGLE.names):
    return [f"data.keypoints {d.keypoints!r}: the built-in faces have Kaggle's keypoints only "
            "(kaggle15, or mtfl5 of them); give data.train_csv for another layout"]
  return []


def _validation_problems(config, num_devices: int) -> list[str]:
  d = config.data
  if d.val_csv and d.val_fraction:
    return [f"data.val_csv validates on its own faces and every training face trains: set "
            f"data.val_fraction=0 (got {d.val_fraction})"]
  return []


# The checks that join several fields: (config, number of devices) -> problems.
RULES = (_batch_problems, _schedule_problems, _wing_problems,
         _model_problems, _layout_problems, _validation_problems)


def value(config, dotted: str):
  """``config``'s value of the dotted field ``dotted``."""
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def problems(config, num_devices: int = 1) -> list[str]:
  """Every problem of ``config`` (empty when it can train): each field's check, then ``RULES``.

  A bad ``model`` field leaves the model's rules out, so each problem is told once.
  """
  out = []
  for f in FIELDS:
    problem = f.check(value(config, f.name)) if f.check else None
    if problem:
      out.append(f"{f.name} {problem}")
  model_sound = not any(p.startswith("model.") for p in out)
  for rule in RULES:
    if rule is not _model_problems or model_sound:  # It assumes each model field is sound.
      out += rule(config, num_devices)
  return out


def check_config(config, num_devices: int) -> None:
  """Refuses impossible settings before any data is read or file written.

  Raises:
    ConfigError: every problem of ``problems``, in one line.
  """
  found = problems(config, num_devices)
  if found:
    raise ConfigError("; ".join(found))

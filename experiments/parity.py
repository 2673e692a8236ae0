"""The parity harness: the seed's Keras network against facekp_jax's, differences one at a time.

  python -m experiments.parity                        # reduced budget: 48,960 training images
  python -m experiments.parity --keras_epochs=12      # ~the issue's budget (146,880 images)
  python -m experiments.parity --list                 # arms, budget, runs planned

Splits ../shared/data/mtfl_train.csv.gz once (``ablate.heldout_files``: the seeded 80/20 split
the held-out ablation studies score on; 6120 training faces, 1530 held out) into
``--scratch`` (outside the repository). Then, one training at a time:

- **Keras** (the reference): ``experiments/parity_keras.py`` under ``--keras_python`` (a
  throw-away TensorFlow environment) runs ../shared/bench/keras_seed_real.py's network as
  ``--linear-head --flip`` on the training faces for ``--keras_epochs`` (each epoch: every face
  and its mirror, static copies), then predicts the held-out faces, plain and under every
  robustness perturbation (written here as .npz by ``facekp_jax.serving.robustness.perturb``).
- **JAX arms**: ``facekp_jax.training.loop.train_and_evaluate`` on configs/resnet.py with the seed's
  regression head, ``data.val_fraction=0`` (every training face trains; the last checkpoint is
  the model), for the same number of training images: ``2 x keras_epochs`` epochs, or
  ``keras_epochs`` where the arm adds static flipped copies. Each arm switches ONE difference
  to Keras' behaviour (``ARMS``); ``all-keras`` switches them all.

Both sides are scored by the same code, ``facekp_jax.serving.scoring.evaluate(..., perturbed=True)``
(``metrics.keypoint_metrics`` plain and under ``robustness.PERTURBATIONS``); Keras' 10 outputs
are put back in the 30-column layout first (``to_layout``). A finished run keeps its scores in
its workdir (``parity.json``) and a re-run skips it; a stopped JAX run resumes from its
checkpoint, a stopped Keras run starts again. After every run the table, plot and JSON in
``--out`` (default experiments/results/parity/) are rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from absl import flags

from configs import resnet
from experiments import ablate
from facekp_jax.core import errors, files, keypoints, plots
from facekp_jax.data import kaggle
from facekp_jax.serving import robustness, scoring

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MTFL_CSV = os.path.join(ROOT, "..", "shared", "data", "mtfl_train.csv.gz")
BENCH = os.path.join(ROOT, "..", "shared", "bench")
KERAS_SCRIPT = os.path.join(HERE, "parity_keras.py")
DEFAULT_KERAS_PYTHON = "/tmp/peers/venv-tf/bin/python"
DEFAULT_SCRATCH = os.path.join(os.path.expanduser("~"), ".cache", "facekp_jax", "parity")
DEFAULT_OUT = os.path.join(HERE, "results", "parity")
KERAS = "keras"
REFERENCE = "jax-default"
BATCH_SIZE = 32  # Both sides (keras_seed_real.py's and configs/resnet.py's).

# One Keras behaviour per arm, as config overrides of the JAX reference.
DIFFERENCES: dict[str, dict] = {
    "glorot": {"model.kernel_init": "glorot_uniform"},
    "eps1e-7": {"adam_eps": 1e-7},
    "raw-pixels": {"model.output_scale": 1.0, "model.output_offset": 0.0},
    "static-flips": {"data.flip_copies": True, "augment.hflip_prob": 0.0},
    "no-brightness": {"augment.brightness_prob": 0.0},
}
# The recipe issue 17 compares (configs/resnet.py's before its geometric augmentation, EMA,
# TTA and raw-pixel defaults): pinned in every arm, so that each arm's only difference is its
# own. None of them is what Keras does; arm `current-defaults` takes configs/resnet.py's values.
PINNED: dict = {"augment.geometry_prob": 0.0, "augment.rotate_deg": 0.0,
                "augment.scale_range": (1.0, 1.0), "augment.shift_px": 0.0, "ema_decay": 0.0,
                "tta": False, "model.output_scale": 48.0, "model.output_offset": 48.0,
                # The heatmap head's fields, unused by the seed's regression head: as the runs had.
                "model.heatmap_stages": 1,
                "tta_rotations": ()}  # Scoring is without TTA; as the runs had.


def _resnet_value(path: str):
  node = resnet.get_config()
  for part in path.split("."):
    node = node[part]
  return node


ARMS: dict[str, dict] = {
    REFERENCE: {}, **DIFFERENCES,
    "all-keras": {k: v for d in DIFFERENCES.values() for k, v in d.items()},
    "current-defaults": {k: _resnet_value(k) for k in PINNED if _resnet_value(k) != PINNED[k]},
}
# What each JAX arm changes, in words (the table's notes).
WHY = {
    "glorot": "Keras' glorot-uniform kernels (Flax: lecun-normal) in every conv and dense layer",
    "eps1e-7": "Keras' Adam epsilon (optax: 1e-8)",
    "raw-pixels": "targets in raw pixels as Keras (the reference maps its output by x * 48 + 48)",
    "static-flips": "every face plus its mirror once per epoch, as Keras' static copies "
                    "(reference: online flips, p = 0.5)",
    "no-brightness": "no brightness augmentation (Keras has none)",
    "all-keras": "all of the above together",
    "current-defaults": "not a Keras behaviour: configs/resnet.py's current values of the fields "
                        "the other arms pin to issue 17's recipe (geometric augmentation, "
                        "parameter EMA; TTA stays off in scoring)",
}


@dataclasses.dataclass(frozen=True)
class Budget:
  """Training images of every run: ``keras_epochs`` x (faces + their mirrors)."""

  keras_epochs: int
  faces: int  # Training faces.

  @property
  def images(self) -> int:
    return 2 * self.faces * self.keras_epochs

  def jax_epochs(self, flip_copies: bool) -> int:
    """Epochs of a JAX run for the same images (static flips double its training set)."""
    per_epoch = self.faces * (2 if flip_copies else 1)
    if self.images % per_epoch:
      raise ValueError(f"{self.images} images is no whole number of epochs of {per_epoch}")
    return self.images // per_epoch


def to_layout(predictions: np.ndarray, columns) -> np.ndarray:
  """Keras' (N, len(columns)) outputs -> (N, 30) in Kaggle's column order.

  Columns Keras does not predict are NaN; ``score_keras`` checks that none of them is labelled.
  """
  columns = [str(c) for c in columns]
  unknown = sorted(set(columns) - set(keypoints.KAGGLE.columns))
  if unknown:
    raise ValueError(f"Keras output columns not in Kaggle's layout: {unknown}")
  out = np.full((len(predictions), keypoints.KAGGLE.num_coords), np.nan, np.float32)
  out[:, [keypoints.KAGGLE.columns.index(c) for c in columns]] = predictions
  return out


# ----------------------------------------------------------------------------- configs


def base_config(train_csv: str):
  """The JAX reference: configs/resnet.py with the seed's head, every training face training."""
  config = resnet.get_config()
  config.model.head = "regression"
  config.data.train_csv = train_csv
  config.data.rows = "all"  # 5 of 15 keypoints labelled: the masked loss.
  config.data.keypoints = keypoints.KAGGLE.name  # As the parity runs were (before layouts).
  config.data.val_fraction = 0.0
  # Keras' step: constant Adam 1e-4 on the mean squared error.
  for path, value in ablate.STUDY_PINNED.items():
    ablate.set_field(config, path, value)
  config.batch_size = BATCH_SIZE
  for path, value in PINNED.items():
    ablate.set_field(config, path, value)
  return config


def arm_config(arm: str, seed: int, budget: Budget, train_csv: str):
  """The resolved config of one JAX run: the arm's overrides, epochs for the budget."""
  config = base_config(train_csv)
  for path, value in ARMS[arm].items():
    ablate.set_field(config, path, value)
  config.num_epochs = budget.jax_epochs(config.data.flip_copies)
  config.seed = seed
  return config


def flat(config) -> dict:
  """``{"a.b": value}`` of a config, for comparing arms field by field."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        out[prefix + key] = value

  walk(config, "")
  return out


# ----------------------------------------------------------------------------- data


def _write_rows(source: str, n: int, path: str) -> str:
  """The first ``n`` rows of ``source`` as ``path`` (written once, atomically)."""
  if not os.path.exists(path):
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    if n > len(frame):
      raise errors.DataError(f"{source}: {n} faces asked for, the file has {len(frame)}")
    tmp = f"{path}.tmp-{os.getpid()}"
    frame.iloc[:n].to_csv(tmp, index=False)
    os.replace(tmp, path)
  return path


def split_files(mtfl_csv: str, folder: str, train_faces: int = 0,
                heldout_faces: int = 0) -> tuple[str, str]:
  """(training CSV, held-out CSV): ablate's seeded 80/20 split; first rows of each if asked."""
  base = resnet.get_config()
  base.data.train_csv = mtfl_csv
  pool, held = ablate.heldout_files(base, "mtfl", folder, ablate.HELDOUT_FRACTION,
                                     partial=False)
  if train_faces:
    pool = _write_rows(pool, train_faces, pool.replace(".csv", f"-first{train_faces}.csv"))
  if heldout_faces:
    held = _write_rows(held, heldout_faces, held.replace(".csv", f"-first{heldout_faces}.csv"))
  return pool, held


def _digest(images: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(images, np.float32).tobytes()).hexdigest()


def keras_sets(heldout_csv: str, folder: str) -> dict[str, tuple[str, str]]:
  """The held-out faces plain and under every perturbation as .npz: {name: (path, digest)}."""
  manifest = os.path.join(folder, "manifest.json")
  if os.path.exists(manifest):
    with open(manifest) as f:
      sets = {k: tuple(v) for k, v in json.load(f).items()}
    if all(os.path.exists(p) for p, _ in sets.values()):
      return sets
  os.makedirs(folder, exist_ok=True)
  faces = kaggle.read_training_csv(heldout_csv)
  sets = {}
  for name in ("plain", *robustness.PERTURBATIONS):
    images = faces.images if name == "plain" else robustness.perturb(faces, name).images
    path = os.path.join(folder, f"{name}.npz")
    np.savez(path + ".tmp.npz", images=images)
    os.replace(path + ".tmp.npz", path)
    sets[name] = (path, _digest(images))
  files.write_json(manifest, sets)
  return sets


class LookupModel:
  """Precomputed predictions as a model for ``scoring.evaluate``: found by the images' digest.

  ``evaluate`` re-reads and re-perturbs the held-out faces itself; an image set that Keras
  did not predict is an error, not a silent mismatch.
  """

  def __init__(self, by_digest: dict[str, np.ndarray], workdir: str):
    self.by_digest = by_digest
    self.workdir = workdir
    self.trained = np.ones(keypoints.KAGGLE.num_coords, np.float32)  # Every keypoint scored.
    self.layout = keypoints.KAGGLE  # Keras' outputs fill Kaggle's 30 columns.
    self.config = None  # Not a run of this package: no training file to warn of.

  def untrained_names(self) -> list[str]:
    return []

  def predict(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
    if tta:
      raise ValueError("Keras predictions were made without flip TTA")
    key = _digest(images)
    if key not in self.by_digest:
      raise KeyError(f"no Keras predictions for this image set ({len(images)} faces)")
    return self.by_digest[key]


# ----------------------------------------------------------------------------- runs


def heldout_record(scores: dict) -> dict:
  """The figures a run reports from ``scoring.evaluate(..., perturbed=True)``."""
  r = scores["robustness"]
  rmse = {name: m["rmse"] for name, m in r["perturbations"].items()}
  out = {"rmse": scores["rmse"], "nme": scores["nme"], "fr": scores["fr_0.10"],
         "auc": scores["auc_0.10"], "heldout_count": scores["count"],
         "heldout_faces": scores["num_faces"], "robustness": rmse}
  for group, names in robustness.GROUPS.items():
    out[f"rmse_{group}"] = float(np.mean([rmse[n] for n in names]))
    out[f"ratio_{group}"] = r["groups"][group]
  return out


def _done(workdir: str) -> dict | None:
  path = os.path.join(workdir, "parity.json")
  if os.path.exists(path):
    with open(path) as f:
      return dict(json.load(f), skipped=True)
  return None


def run_keras(seed: int, budget: Budget, train_csv: str, heldout_csv: str, sets: dict,
              workdir: str, keras_python: str, bench: str = BENCH) -> dict:
  """Trains and scores one Keras run (or reads a finished one)."""
  done = _done(workdir)
  if done:
    return done
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  out = os.path.join(workdir, "predictions.npz")
  command = [keras_python, KERAS_SCRIPT, "--train", train_csv, "--epochs",
             str(budget.keras_epochs), "--seed", str(seed), "--bench", bench, "--out", out]
  for name, (path, _) in sets.items():
    command += ["--predict", f"{name}={path}"]
  with open(os.path.join(workdir, "keras.log"), "w") as log:
    proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
  if proc.returncode:
    raise RuntimeError(f"Keras run failed (exit {proc.returncode}); see "
                       f"{os.path.join(workdir, 'keras.log')}")
  with np.load(out) as f:
    columns = [str(c) for c in f["columns"]]
    meta = json.loads(str(f["meta"]))
    by_digest = {digest: to_layout(f[name], columns) for name, (_, digest) in sets.items()}
  record = dict(score_keras(by_digest, heldout_csv, columns, workdir), columns=columns,
                steps=meta["steps"], images_seen=meta["images_seen"],
                epochs=meta["epochs"], num_train=meta["train_images"],
                train_seconds=meta["train_seconds"], train_loss=meta["train_loss"],
                tensorflow=meta["tensorflow"], wall_seconds=time.time() - t0)
  files.write_json(os.path.join(workdir, "parity.json"), record)
  return dict(record, skipped=False)


def score_keras(by_digest: dict[str, np.ndarray], heldout_csv: str, columns,
                workdir: str) -> dict:
  """Keras' predictions scored by ``scoring.evaluate``, the JAX arms' own scoring."""
  faces = kaggle.read_training_csv(heldout_csv)
  n = len(faces)
  idx = [keypoints.KAGGLE.columns.index(c) for c in columns]
  other = np.delete(faces.mask, idx, axis=1)
  if other.any():
    raise ValueError("the held-out faces label columns Keras does not predict")
  model = LookupModel({k: np.nan_to_num(v, nan=0.0) for k, v in by_digest.items()}, workdir)
  # One chunk: the images evaluate re-reads are the very arrays Keras was given.
  scores, _, _ = scoring.evaluate(model, heldout_csv, tta=False, chunk_rows=n, perturbed=True)
  return heldout_record(scores)


def run_jax(config, workdir: str, heldout_csv: str) -> dict:
  """Trains (or resumes) one JAX run and scores its last checkpoint (or reads a finished one)."""
  from facekp_jax.serving import predictor
  from facekp_jax.training import loop
  done = _done(workdir)
  if done:
    return done
  t0 = time.time()
  results = loop.train_and_evaluate(config, workdir)
  model = predictor.load(workdir, "latest")
  scores, _, _ = scoring.evaluate(model, heldout_csv, tta=False, perturbed=True)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f if line.strip()]
  record = dict(heldout_record(scores), steps=results["steps"],
                images_seen=results["steps"] * config.batch_size, epochs=config.num_epochs,
                num_train=results["num_train"],
                train_seconds=float(sum(h["epoch_seconds"] for h in history)),
                train_loss=[h["train_loss"] for h in history], wall_seconds=time.time() - t0)
  files.write_json(os.path.join(workdir, "parity.json"), record)
  return dict(record, skipped=False)


def config_changes(workdir: str, config) -> list[str]:
  """Fields where a finished run's config.json differs from ``config`` (a later code change)."""
  with open(os.path.join(workdir, "config.json")) as f:
    saved = flat(json.loads(json.dumps(json.load(f))))
  now = flat(json.loads(config.to_json()))
  return [f"{k}: {saved.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}"
          for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


# ----------------------------------------------------------------------------- tables


def _mean_sd(values):
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None, None
  return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


_KEYS = ("rmse", "nme", "rmse_rot+-20", "rmse_rot+-30", "ratio_rot+-20", "ratio_rot+-30",
         "ratio_scale0.85", "ratio_scale1.15", "ratio_shift+-6", "wall_seconds", "train_seconds",
         "images_seen")


def summarise(arms: list[dict]) -> None:
  """Adds ``summary`` to each arm: mean/sd over seeds; differences from jax-default and Keras."""
  by_name = {a["name"]: a for a in arms}
  for arm in arms:
    s = {"n": len(arm["runs"]), "seeds": [r["seed"] for r in arm["runs"]]}
    for key in _KEYS:
      s[f"{key}_mean"], s[f"{key}_sd"] = _mean_sd([r.get(key) for r in arm["runs"]])
    arm["summary"] = s
  ref, keras = by_name.get(REFERENCE), by_name.get(KERAS)
  for arm in arms:
    s = arm["summary"]
    for key in ("rmse", "rmse_rot+-20", "rmse_rot+-30"):
      if ref and arm is not ref and arm["name"] != KERAS:  # Paired: the same seed's init.
        base = {r["seed"]: r[key] for r in ref["runs"]}
        diffs = [r[key] - base[r["seed"]] for r in arm["runs"] if r["seed"] in base]
        s[f"{key}_vs_ref_mean"], s[f"{key}_vs_ref_sd"] = _mean_sd(diffs)
        s[f"{key}_vs_ref_n"] = len(diffs)
      k = keras["summary"][f"{key}_mean"] if keras and keras["runs"] else None
      if k is not None and s[f"{key}_mean"] is not None and arm is not keras:
        s[f"{key}_vs_keras"] = s[f"{key}_mean"] - k
        s[f"{key}_vs_keras_pct"] = 100.0 * (s[f"{key}_mean"] / k - 1.0)


def _fmt(mean, sd=None, digits=3, sign=False) -> str:
  if mean is None:
    return "—"
  text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
  return text + ("" if sd is None else f" ± {sd:.{digits}f}")


def _overrides(arm: dict) -> str:
  if arm["name"] == KERAS:
    return "`keras_seed_real.py --linear-head --flip`"
  return ", ".join(f"`{k}={v!r}`" for k, v in arm["overrides"].items()) or "—"


def markdown(result: dict) -> str:
  """The parity table: Keras first, then the JAX arms; notes on what is equal by construction."""
  b, arms = result["budget"], result["arms"]
  lines = [
      "# Parity: the seed's Keras network vs facekp_jax's (`model.head=regression`)", "",
      f"- budget: {b['images']:,} training images per run (Keras {b['keras_epochs']} epochs of "
      f"{b['faces']} faces + their mirrors; JAX {2 * b['keras_epochs']} epochs of {b['faces']} "
      f"faces, or {b['keras_epochs']} of faces + mirrors in the static-flip arms); batch "
      f"{BATCH_SIZE}, Adam 1e-4, MSE",
      f"- data: {result['train_faces']} training faces and {result['heldout_faces']} held-out "
      f"faces of `{result['source']}` (seeded 80/20 split, `ablate.heldout_files`: the held-out "
      "faces of the ablation studies); both sides train on every training face "
      "(JAX `data.val_fraction=0`, its last checkpoint is the model; no validation split)",
      "- scored: the present coordinates of the held-out faces (5 points), by "
      "`facekp_jax.serving.scoring.evaluate(..., perturbed=True)` for both sides; no flip TTA; "
      "errors in pixels of the 96x96 image",
      f"- command: `{result['command']}`", "",
      "| arm | overrides | seeds | images seen | RMSE (px) | NME | Δ vs jax-default (paired) | "
      "Δ vs keras | vs keras | rot±20 RMSE | rot±20 ratio | rot±20 vs keras | rot±30 RMSE | "
      "rot±30 ratio | scale0.85 ratio | scale1.15 ratio | shift±6 ratio | train s/run |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for arm in arms:
    s = arm["summary"]
    if not s["n"]:
      lines.append(f"| {arm['name']} | {_overrides(arm)} | — (not run yet) |" + " |" * 15)
      continue
    pct = s.get("rmse_vs_keras_pct")
    pct20 = s.get("rmse_rot+-20_vs_keras_pct")
    lines.append(
        f"| {arm['name']} | {_overrides(arm)} | {','.join(map(str, s['seeds']))} | "
        f"{_fmt(s['images_seen_mean'], digits=0)} | {_fmt(s['rmse_mean'], s['rmse_sd'])} | "
        f"{_fmt(s['nme_mean'], s['nme_sd'], 4)} | "
        f"{_fmt(s.get('rmse_vs_ref_mean'), s.get('rmse_vs_ref_sd'), sign=True)} | "
        f"{_fmt(s.get('rmse_vs_keras'), sign=True)} | "
        f"{'—' if pct is None else f'{pct:+.1f} %'} | "
        f"{_fmt(s['rmse_rot+-20_mean'], s['rmse_rot+-20_sd'])} | "
        f"{_fmt(s['ratio_rot+-20_mean'])} | {'—' if pct20 is None else f'{pct20:+.1f} %'} | "
        f"{_fmt(s['rmse_rot+-30_mean'], s['rmse_rot+-30_sd'])} | "
        f"{_fmt(s['ratio_rot+-30_mean'])} | {_fmt(s['ratio_scale0.85_mean'])} | "
        f"{_fmt(s['ratio_scale1.15_mean'])} | {_fmt(s['ratio_shift+-6_mean'])} | "
        f"{_fmt(s['train_seconds_mean'], digits=0)} |")
  lines += [
      "", "Values are mean ± sd over the seeds listed (no sd: one seed). Δ vs jax-default: the "
      "arm minus jax-default, seed by seed (the same seed gives the same initialisation and "
      "batch order). Δ / % vs keras: the arm's mean minus the Keras mean (issue 17's target: "
      "within 2 % plain and under ±20° rotations). rot±20 / rot±30 RMSE: mean of the -θ and +θ "
      "rotations' RMSE; ratios: perturbed RMSE over the same run's plain RMSE "
      "(`facekp_jax/serving/robustness.py`; labels pushed off the frame are not scored). "
      "train s/run: "
      "seconds of training (Keras' fit; JAX's epochs, over every session of a resumed run) on a "
      "2-core machine shared with other trainings (load 4-11): not a speed comparison.", "",
      "Arms (each switches one difference to Keras' behaviour):", ""]
  lines += [f"- `{name}`: {why}" for name, why in WHY.items()]
  lines += [
      "", "Pinned in every JAX arm to the recipe issue 17 compares (configs/resnet.py's defaults "
      "before its geometric augmentation, EMA and TTA): " + ", ".join(
          f"`{k}={v!r}`" for k, v in PINNED.items()) + " (arm `current-defaults` unpins them).",
      "", "Equal by construction, so no arm: the architecture (18,007,710 parameters in both), "
      "batch norm (momentum 0.99, epsilon 1e-3: Keras' defaults, `facekp_jax/model/resnet.py`), "
      "dropout "
      "0.2/0.1, zero biases, Adam 1e-4 (β 0.9/0.999), MSE over the labelled coordinates, batch "
      "32, pixels / 255, and the data amount (both train on the same training faces; JAX "
      "without a validation split).", "",
      "Left as they are (the Keras reference is ../shared/bench/keras_seed_real.py, unchanged): "
      "Keras predicts only the 10 labelled coordinates (JAX: all 30, the 20 unlabelled masked out "
      "of the loss); its flip maps x -> 96 - x (JAX: 95 - x, the pixel-centre convention), so "
      "its mirrored copies' x labels sit 0.5 px right of their faces; Keras' Adam adds epsilon "
      "to sqrt(v) before bias correction (optax after); Keras trains the last, partial batch of "
      "an epoch (JAX drops it: 'images seen' counts steps x 32).", ""]
  if result.get("extra_arm"):
    lines.append(f"Best single difference at seed(s) {result['jax_seeds']}, re-run at seed(s) "
                 f"{result['extra_seeds']}: `{result['extra_arm']}`.")
  stale = [f"- {a['name']} seed {r['seed']}: {'; '.join(r['config_changes'])}" for a in arms
           for r in a["runs"] if r.get("config_changes")]
  if stale:
    lines += ["", "Runs made under an older config (kept; delete the run's workdir to redo "
              "it): the fields that differ now (then -> now):"] + stale
  failures = [f"- {a['name']} seed {f['seed']}: {f['error']}" for a in arms
              for f in a.get("failed", [])]
  if failures:
    lines += ["", "Failed runs (a re-run retries them):"] + failures
  return "\n".join(lines) + "\n"


def plot(result: dict):
  """Held-out RMSE and rot±20 RMSE per arm (dots: seeds), Keras' mean ± 2 % as a band."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  arms = [a for a in result["arms"] if a["runs"]]
  fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.3 * len(arms) + 3), 4.2))
  keras = next((a for a in arms if a["name"] == KERAS), None)
  for ax, key, label in zip(axes, ("rmse", "rmse_rot+-20"),
                            ("held-out RMSE (px)", "held-out RMSE under ±20° rotation (px)")):
    if keras:
      k = keras["summary"][f"{key}_mean"]
      ax.axhspan(0.98 * k, 1.02 * k, color="tab:orange", alpha=0.2, label="Keras mean ± 2 %")
      ax.axhline(k, color="tab:orange", lw=1)
    for i, arm in enumerate(arms):
      values = [r[key] for r in arm["runs"]]
      color = "tab:orange" if arm["name"] == KERAS else "tab:blue"
      ax.plot(np.full(len(values), i) + np.linspace(-0.1, 0.1, len(values)) * (len(values) > 1),
              values, "o", color=color, alpha=0.7)
      ax.plot([i - 0.25, i + 0.25], [np.mean(values)] * 2, color="black", lw=1.5)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([a["name"] for a in arms], rotation=25, ha="right")
    ax.set_ylabel(label)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
  b = result["budget"]
  fig.suptitle(f"Keras vs facekp_jax (regression head), {b['images']:,} training images, "
               f"{result['heldout_faces']} held-out MTFL faces (dots: seeds; bars: means)",
               fontsize=9)
  fig.tight_layout()
  return fig


def write_outputs(result: dict, out: str) -> None:
  summarise(result["arms"])
  os.makedirs(out, exist_ok=True)
  files.write_json(os.path.join(out, "results.json"), files.jsonable(result))
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(markdown(result))
  if any(a["runs"] for a in result["arms"]):
    plots.save_figure(plot(result), os.path.join(out, "parity.png"))


# ----------------------------------------------------------------------------- command line


# Running order of the single differences: the likeliest to matter first, so that a session
# that runs out of time has measured them.
_ORDER = (REFERENCE, "all-keras", "raw-pixels", "static-flips", "glorot", "no-brightness",
          "eps1e-7", "current-defaults")


def plan(keras_seeds: list[int], jax_seeds: list[int], arms: list[str]) -> list[tuple[str, int]]:
  """(arm, seed) in running order.

  Keras' first seed, jax-default and all-keras at the first JAX seed (the whole gap, early),
  Keras' other seeds, then the single differences; then the other JAX seeds.
  """
  arms = sorted(arms, key=lambda a: _ORDER.index(a) if a in _ORDER else len(_ORDER))
  first = [(a, s) for s in jax_seeds[:1] for a in arms if a in (REFERENCE, "all-keras")]
  runs = [(KERAS, s) for s in keras_seeds[:1]] + first + [(KERAS, s) for s in keras_seeds[1:]]
  runs += [(a, s) for s in jax_seeds for a in arms if (a, s) not in first]
  return runs


def main(argv=None) -> dict | None:
  from facekp_jax import cli  # pylint: disable=g-import-not-at-top
  fv = cli.command_flags()
  flags.DEFINE_integer("keras_epochs", 4, "Keras epochs of faces + mirrors; JAX gets the same "
                       "images", lower_bound=1, flag_values=fv)
  flags.DEFINE_list("keras_seeds", ["0", "1"], "Keras seeds", flag_values=fv)
  flags.DEFINE_list("jax_seeds", ["0"], "every JAX arm's seeds", flag_values=fv)
  flags.DEFINE_list("extra_seeds", ["1"], "then jax-default and the best single difference at "
                    "these seeds", flag_values=fv)
  flags.DEFINE_list("arms", list(ARMS), f"JAX arms (of {','.join(ARMS)})", flag_values=fv)
  flags.DEFINE_integer("train_faces", 0, "the first N training faces only (0: all; for smoke "
                       "tests)", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("heldout_faces", 0, "the first N held-out faces only (0: all; for smoke "
                       "tests)", lower_bound=0, flag_values=fv)
  flags.DEFINE_string("keras_python", DEFAULT_KERAS_PYTHON, "the TensorFlow venv's python",
                      flag_values=fv)
  flags.DEFINE_string("mtfl_csv", MTFL_CSV, "MTFL's faces", flag_values=fv)
  flags.DEFINE_string("scratch", DEFAULT_SCRATCH, "data and run workdirs", flag_values=fv)
  flags.DEFINE_string("out", DEFAULT_OUT, "where the table, plot and JSON go", flag_values=fv)
  flags.DEFINE_bool("list", False, "print the plan and exit", flag_values=fv)
  flags.DEFINE_bool("tables_only", False, "rewrite the table, plot and JSON from the finished "
                    "runs; train nothing", flag_values=fv)
  cli.parse(fv, "python -m experiments.parity", __doc__.split("\n\n")[0], argv)
  args = fv
  try:
    keras_seeds, jax_seeds, extra_seeds = (
        [int(x) for x in seeds] for seeds in (fv.keras_seeds, fv.jax_seeds, fv.extra_seeds))
  except ValueError:
    cli.usage_error("--keras_seeds, --jax_seeds and --extra_seeds take comma lists of whole "
                    "numbers")
  unknown = sorted(set(args.arms) - set(ARMS))
  if unknown:
    cli.usage_error(f"unknown arm(s) {unknown}; arms: {list(ARMS)}")
  scratch = os.path.realpath(args.scratch)
  if scratch == ROOT or scratch.startswith(ROOT + os.sep):
    cli.usage_error(f"--scratch {args.scratch} is inside the repository; data and "
                    "checkpoints stay out")
  train_csv, heldout_csv = split_files(args.mtfl_csv, os.path.join(scratch, "data"),
                                       args.train_faces, args.heldout_faces)
  n_train = args.train_faces or len(pd.read_csv(train_csv, usecols=["Image"]))
  budget = Budget(args.keras_epochs, n_train)
  runs = plan(keras_seeds, jax_seeds, args.arms)
  if args.list:
    print(f"budget: {budget.images:,} images; training faces {train_csv}; held out {heldout_csv}")
    for arm, seed in runs:
      epochs = args.keras_epochs if arm == KERAS else arm_config(arm, seed, budget,
                                                                 train_csv).num_epochs
      print(f"  {arm:<14} seed {seed}  {epochs} epochs  {ARMS.get(arm, 'keras_seed_real.py')}")
    print(f"  then jax-default and the best single difference at seeds {extra_seeds}")
    return None

  import jax  # pylint: disable=g-import-not-at-top

  from facekp_jax.training import interrupts  # pylint: disable=g-import-not-at-top
  cli.quiet_libraries()
  jax.config.update("jax_compilation_cache_dir", os.path.join(scratch, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  tag = os.path.basename(ablate.csv_stem(heldout_csv))
  sets = keras_sets(heldout_csv, os.path.join(scratch, "keras_sets", tag))
  n_held = len(pd.read_csv(heldout_csv, usecols=["Image"]))
  command = " ".join(["python -m experiments.parity"] + [
      a for a in (sys.argv[1:] if argv is None else argv) if a != "--tables_only"])
  result = {"budget": dict(dataclasses.asdict(budget), images=budget.images),
            "train_faces": n_train, "heldout_faces": n_held, "command": command,
            "source": os.path.basename(args.mtfl_csv), "train_csv": train_csv,
            "heldout_csv": heldout_csv, "keras_seeds": keras_seeds,
            "jax_seeds": jax_seeds, "extra_seeds": extra_seeds, "extra_arm": None,
            "arms": [{"name": KERAS, "overrides": {}, "runs": [], "failed": []}] + [
                {"name": a, "overrides": ARMS[a], "runs": [], "failed": []} for a in args.arms]}
  arms = {a["name"]: a for a in result["arms"]}

  def run(arm: str, seed: int) -> None:
    if any(r["seed"] == seed for r in arms[arm]["runs"]):
      return
    if arm == KERAS:
      workdir = os.path.join(scratch, "runs", KERAS,
                             f"seed{seed}-e{budget.keras_epochs}-n{n_train}-{tag}")
      go = lambda: run_keras(seed, budget, train_csv, heldout_csv, sets, workdir,
                             args.keras_python)
    else:
      config = arm_config(arm, seed, budget, train_csv)
      workdir = os.path.join(scratch, "runs", arm,
                             f"seed{seed}-e{config.num_epochs}-n{n_train}-{tag}")
      go = lambda: dict(run_jax(config, workdir, heldout_csv),
                        config_changes=config_changes(workdir, config))
    if args.tables_only and _done(workdir) is None:
      return
    print(f"{arm} seed {seed}: {workdir}", flush=True)
    try:
      record = go()
    except (interrupts.Interrupted, KeyboardInterrupt):
      raise
    except Exception as e:  # pylint: disable=broad-except
      message = " ".join(f"{type(e).__name__}: {e}".split())[:300]
      print(f"  FAILED: {message}", flush=True)
      arms[arm]["failed"].append({"seed": seed, "error": message})
      return
    status = "done before" if record.pop("skipped") else f"{record['wall_seconds']:.0f}s"
    print(f"  RMSE {record['rmse']:.3f} px, NME {record['nme']:.4f}, rot+-20 "
          f"{record['rmse_rot+-20']:.3f} px (x{record['ratio_rot+-20']:.2f}), rot+-30 "
          f"{record['rmse_rot+-30']:.3f} px ({status})", flush=True)
    arms[arm]["runs"].append(dict(record, seed=seed, run=os.path.relpath(workdir, scratch)))
    write_outputs(result, args.out)

  try:
    for arm, seed in runs:
      run(arm, seed)
    singles = [a for a in args.arms if a in DIFFERENCES and arms[a]["runs"]]
    if extra_seeds and singles:
      best = min(singles, key=lambda a: np.mean(
          [r["rmse"] for r in arms[a]["runs"] if r["seed"] in jax_seeds] or [np.inf]))
      result["extra_arm"] = best
      for seed in extra_seeds:
        for arm in dict.fromkeys([REFERENCE, best]):
          if arm in arms:
            run(arm, seed)
  except interrupts.Interrupted as e:
    write_outputs(result, args.out)
    print(f"{e} (finished runs are kept; the same command skips them)", file=sys.stderr)
    sys.exit(128 + e.signum)
  write_outputs(result, args.out)
  print(f"wrote {args.out}/table.md, parity.png, results.json", flush=True)
  return result


if __name__ == "__main__":
  main()

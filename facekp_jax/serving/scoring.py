"""Scoring a trained model on labelled faces: figures, tables, plots (evaluate).

``run`` is ``python -m facekp_jax.evaluate``. The faces are a CSV of the model's keypoint
layout's columns and ``Image`` (Kaggle's training.csv layout for ``kaggle15``; ``.csv`` or
``.csv.gz``; streamed in chunks) or a folder of images with .pts files (``data.pts``); empty
cells are missing labels and are not scored, so files with only some keypoints work. ``run``
prints the RMSE in pixels (overall and per keypoint of the layout), the number of coordinates
scored, the NME (the layout's normaliser: inter-ocular where the faces have outer eye corners,
else inter-pupil: the JSON says which), FR@0.10 and AUC@0.10, and writes ``W/eval_<file
stem>.json``, a 4x4 grid of the file's first faces (``W/eval_<file stem>.png``) and the
cumulative error distribution (``W/eval_<file stem>_ced.png``). ``perturbed`` also re-scores the
faces rotated, scaled and shifted (``serving.robustness``) into the JSON's ``robustness`` entry,
a table and ``W/eval_<file stem>_robustness.png``.
"""

from __future__ import annotations

import os

import numpy as np

from facekp_jax.core import faces as faces_lib
from facekp_jax.core import files, plots
from facekp_jax.core import metrics as metrics_lib
from facekp_jax.core.errors import DataError
from facekp_jax.core.faces import Faces
from facekp_jax.data import kaggle, pts
from facekp_jax.serving import predictor, robustness

_GRID = 16


def file_stem(path: str) -> str:
  """``dir/training.csv.gz`` -> ``training``."""
  name = os.path.basename(path)
  name = name or os.path.basename(os.path.dirname(path))  # A folder given as "dir/".
  for ending in (".gz", ".csv"):
    if name.lower().endswith(ending):
      name = name[:-len(ending)]
  return name or "file"


def evaluate(model: predictor.Predictor, path: str, tta: bool = False,
             chunk_rows: int | None = None,
             perturbed: bool = False,
             bad_labels: str = "error") -> tuple[dict, Faces, np.ndarray]:
  """Scores ``model`` on the labelled faces of ``path``, streamed in chunks.

  Args:
    model: a restored model.
    path: a CSV of the model's layout's columns and Image (``data.kaggle``), or a folder of
      images with .pts files (``data.pts``).
    tta: flip test-time augmentation.
    chunk_rows: faces per chunk (default: 8 evaluation batches).
    perturbed: also score the robustness perturbations (``results["robustness"]``).
    bad_labels: a coordinate beyond the plausibility bound: "error", "mask" or "drop"
      (``kaggle.BAD_LABELS``); nearer ones outside the frame are scored like any other.

  Returns:
    (results, the first 16 faces, their predictions). ``results`` holds the
    ``metrics.keypoint_metrics`` figures, ``num_faces``, the per-face NME list
    ``per_face_nme`` (for the CED) and, when ``perturbed``, ``robustness``.

  Raises:
    DataError: a malformed file, or one without any keypoint label.
  """
  chunk_rows = chunk_rows or 8 * model.eval_batch_size
  # Keypoints the run never learnt: unscored.
  trained = model.trained
  predictions, targets, mask, shown = [], [], [], []
  layout = model.layout
  scorer = robustness.Scorer(lambda x: model.predict(x, tta=tta), layout) if perturbed else None
  if os.path.isdir(path):
    chunks = [pts.read_folder(path, layout)[0]]
  else:
    chunks = kaggle.read_training_chunks(path, chunk_rows, bad_labels, layout)
  for faces in chunks:
    faces = Faces(faces.images, faces.targets * trained, faces.mask * trained)
    predictions.append(model.predict(faces.images, tta=tta))
    if scorer:
      scorer.add(faces)
    targets.append(faces.targets)
    mask.append(faces.mask)
    if sum(map(len, shown)) < _GRID:
      shown.append(faces.take(slice(0, _GRID - sum(map(len, shown)))))
  predictions, targets, mask = map(np.concatenate, (predictions, targets, mask))
  if not mask.any():
    raise DataError(f"{path}: no keypoint labels to score (of the keypoints this model "
                         "was trained on)")
  metrics = metrics_lib.keypoint_metrics(predictions, targets, mask, layout)
  results = dict(metrics, num_faces=len(predictions), keypoints=layout.name,
                 untrained_keypoints=model.untrained_names())
  results["per_face_nme"] = metrics_lib.per_face_nme(predictions, targets, mask,
                                                     layout)[0].tolist()
  if scorer:
    results["robustness"] = scorer.results()
  shown = faces_lib.concat(shown)
  drawn = np.where(trained > 0, predictions[:len(shown)], np.nan)  # Untrained: not drawn.
  return results, shown, drawn


def table(results: dict) -> str:
  """A readable summary: overall figures, then one line per keypoint."""
  if results["nme"] is None:
    nme = "n/a (no face with both eye centres or outer corners)"
  else:
    nme = (f"{results['nme']:.4f} ({results['nme_normaliser'].replace('_', '-')}, "
           f"{results['nme_faces']} faces)   FR@0.10 {results['fr_0.10']:.4f}   "
           f"AUC@0.10 {results['auc_0.10']:.4f}")
  lines = [f"{results['num_faces']} faces, {results['count']} coordinates scored",
           f"RMSE {results['rmse']:.3f} px   NME {nme}", "",
           f"{'keypoint':<28}{'RMSE (px)':>10}"]
  untrained = set(results.get("untrained_keypoints", ()))
  for name, value in results["per_keypoint_rmse"].items():
    shown = "untrained" if name in untrained else "-" if value is None else f"{value:.3f}"
    lines.append(f"{name:<28}{shown:>10}")
  if untrained:
    lines.append(f"({len(untrained)} keypoints had no labels in the training split: not scored)")
  return "\n".join(lines)


def run(workdir: str, path: str, which: str = "best", tta: bool | None = None,
        perturbed: bool = False, bad_labels: str = "error",
        tta_rotations: tuple[float, ...] | None = None) -> dict:
  """Restores, scores, prints the tables and writes the JSON and plots; returns the JSON.

  ``tta=None`` follows the run's ``config.tta``, ``tta_rotations=None`` its
  ``config.tta_rotations`` (the turned views of the test-time average).
  """
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found")  # Before spending time on the model.
  model = predictor.load(workdir, which)
  tta = model.use_tta(tta, tta_rotations)
  metrics, shown, shown_predictions = evaluate(model, path, tta, perturbed=perturbed,
                                               bad_labels=bad_labels)
  results = files.jsonable(dict(csv=os.path.abspath(path), workdir=os.path.abspath(workdir),
                                      checkpoint=which, step=model.step, tta=tta,
                                      tta_rotations=model.config.tta_rotations if tta else (),
                                      **metrics))
  stem = file_stem(path)
  json_path = os.path.join(workdir, f"eval_{stem}.json")
  png_path = os.path.join(workdir, f"eval_{stem}.png")
  files.write_json(json_path, results)
  title = f"{os.path.basename(path)}: RMSE {results['rmse']:.2f} px (step {model.step}" + (
      ", TTA)" if tta else ")")
  plots.save_figure(plots.plot_grid(shown.images, shown_predictions, shown.targets, shown.mask,
                                    title=title, layout=model.layout,
                                    shown=model.trained[::2] > 0), png_path)
  written = [json_path, png_path, os.path.join(workdir, f"eval_{stem}_ced.png")]
  plots.save_figure(plots.plot_ced(results["per_face_nme"], results["nme_normaliser"],
                                     title=os.path.basename(path)), written[-1])
  extra = ""
  if perturbed:
    written.append(os.path.join(workdir, f"eval_{stem}_robustness.png"))
    plots.save_figure(robustness.plot(results["robustness"], title=title), written[-1])
    extra = "\n\nrobustness:\n" + robustness.table(results["robustness"])
  print(f"{model.describe(tta)}\nfile {path}: {table(results)}{extra}\n\nwrote "
        f"{', '.join(written)}")
  return results

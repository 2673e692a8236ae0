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

Two figures say whether the others can be trusted, each with a one-line warning on stderr
(``warning_lines``). ``mean_shape_rmse``: the RMSE of the training split's mean shape
(``training.workdir.mean_shape``) predicted for every face; a model no better than it has not
learnt. Workdirs that predate that record compare with the scored labels' own mean shape
(``mean_shape_from``: "scored file"), the best any one shape can score on them, so the warning
is never kinder than the training split's mean would be. ``is_training_file``: the file is the
run's own training file (``data.train_csv``, the same file or a byte-for-byte copy; a relative
``data.train_csv`` is read from the current folder, as training read it), whose training faces
flatter the model; ``split="val"`` (``SPLITS``) then scores only the run's held-out validation
faces, split exactly as training split them (``data.dataset.load_dataset`` over the run's data
config: its ``data.rows`` and ``data.bad_labels`` apply), into ``W/eval_<file stem>_val.json``.
A progress bar (stderr, terminals only) counts the faces scored, and the perturbations of each
chunk (``serving.robustness``).
"""

from __future__ import annotations

import filecmp
import os
import sys

import ml_collections
import numpy as np
from tqdm import tqdm

from facekp_jax.core import faces as faces_lib
from facekp_jax.core import files, keypoints, plots
from facekp_jax.core import metrics as metrics_lib
from facekp_jax.core.errors import DataError
from facekp_jax.core.faces import Faces
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.data import kaggle, pts
from facekp_jax.serving import predictor, robustness
from facekp_jax.training import config as config_lib
from facekp_jax.training import workdir as workdir_lib

_GRID = 16
# What ``evaluate`` scores: every face of the file, or the run's held-out validation split of it.
SPLITS = ("all", "val")


def file_stem(path: str) -> str:
  """``dir/training.csv.gz`` -> ``training``."""
  name = os.path.basename(path)
  name = name or os.path.basename(os.path.dirname(path))  # A folder given as "dir/".
  for ending in (".gz", ".csv"):
    if name.lower().endswith(ending):
      name = name[:-len(ending)]
  return name or "file"


def is_training_file(config: ml_collections.ConfigDict, path: str) -> bool:
  """Whether ``path`` is what the run of ``config`` trained on (``data.train_csv``): the same
  file or folder, or a byte-for-byte copy of the file. False for the built-in faces."""
  train = config.data.train_csv
  if not (train and os.path.exists(train) and os.path.exists(path)):
    return False
  if os.path.samefile(train, path):
    return True
  # filecmp compares the sizes first, then the bytes, and remembers the outcome.
  return os.path.isfile(train) and os.path.isfile(path) and filecmp.cmp(train, path,
                                                                        shallow=False)


def split_problem(workdir: str, path: str, split: str) -> str | None:
  """Why the run of ``workdir`` cannot score ``split`` of ``path`` (None: it can). ``"val"``
  needs the run's own training file, and a run that held faces out of it."""
  if split == "all" or not os.path.exists(path):  # A missing file is ``run``'s own error.
    return None
  if split not in SPLITS:
    return f"--split must be one of {', '.join(SPLITS)}, got {split!r}"
  config = config_lib.read_config(workdir)
  data = config.data
  if not data.train_csv:
    return ("--split=val: this run trained on the built-in synthetic faces (data.train_csv is "
            "empty), not on a file; --split=val scores the held-out faces of the run's own "
            "training file")
  if not is_training_file(config, path):
    return (f"--split=val: {path} is not the file this run trained on ({data.train_csv}); "
            "--split=val scores only that file's held-out validation faces")
  if data.val_csv:
    return (f"--split=val: this run validated on faces of their own (data.val_csv = "
            f"{data.val_csv}), not on a split of {data.train_csv}; score that file with "
            "--split=all")
  if not data.val_fraction:
    return ("--split=val: this run held out no faces (data.val_fraction=0: a final fit on "
            "every face)")
  return None


def _split(config: ml_collections.ConfigDict, path: str) -> tuple[Faces, Faces]:
  """(train, validation) faces of ``path``, the run's training file or its copy, split as the
  run split it: the dataset module's own reading and split, over the run's data config."""
  data = config.data.copy_and_resolve_references()
  data.train_csv = path
  train, val, _, _ = dataset_lib.load_dataset(data, config.seed)
  return train, val


def _trained_only(faces: Faces, trained: np.ndarray) -> Faces:
  """``faces`` with the labels of keypoints the run never learnt masked out (unscored)."""
  return Faces(faces.images, faces.targets * trained, faces.mask * trained)


def _mean_shape_baseline(workdir: str, layout: keypoints.Layout, targets: np.ndarray,
                         mask: np.ndarray) -> dict:
  """The RMSE of one mean shape predicted for every face: the training split's, or where the
  workdir predates that record, the scored labels' own (``mean_shape_from`` says which)."""
  recorded = workdir_lib.mean_shape(workdir, layout)
  if recorded is None:  # Only the labels are read: no images needed.
    shape = metrics_lib.mean_shape_prediction(Faces(None, targets, mask), 1)[0]
  else:
    shape = recorded.reshape(-1)
  # Keypoints the run never labelled have no mean (NaN); their cells are masked out anyway.
  guess = np.tile(np.nan_to_num(shape), (len(targets), 1))
  return {"mean_shape_rmse": metrics_lib.keypoint_metrics(guess, targets, mask, layout)["rmse"],
          "mean_shape_from": "scored file" if recorded is None else "training split"}


def evaluate(model: predictor.Predictor, path: str, tta: bool = False,
             chunk_rows: int | None = None,
             perturbed: bool = False,
             bad_labels: str = "error",
             split: str = "all") -> tuple[dict, Faces, np.ndarray]:
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
    split: "all" faces of the file, or "val": only the run's held-out validation split of its
      own training file (``split_problem`` says when it cannot).

  Returns:
    (results, the first 16 faces, their predictions). ``results`` holds the
    ``metrics.keypoint_metrics`` figures, ``num_faces``, the per-face NME list
    ``per_face_nme`` (for the CED), the mean shape's ``mean_shape_rmse`` (``mean_shape_from``)
    and whether the model ``beats_mean_shape``, the ``split`` scored, ``is_training_file``
    and, for all of the training file, ``training_faces`` and the ``val_split``'s figures
    (``num_faces``, ``rmse``); when ``perturbed``, ``robustness``.

  Raises:
    DataError: a malformed file, or one without any keypoint label.
    ValueError: a ``split`` that cannot be scored (``split_problem``).
  """
  problem = split_problem(model.workdir, path, split)
  if problem:
    raise ValueError(problem)
  chunk_rows = chunk_rows or 8 * model.eval_batch_size
  # Keypoints the run never learnt: unscored.
  trained = model.trained
  predictions, targets, mask, shown = [], [], [], []
  layout = model.layout
  scorer = robustness.Scorer(lambda x: model.predict(x, tta=tta), layout) if perturbed else None
  training_file = model.config is not None and is_training_file(model.config, path)
  held_out = _split(model.config, path) if training_file else None
  total = None  # A CSV's length is not known before it is read.
  if split == "val":
    val = held_out[1]
    chunks = (val.take(slice(i, i + chunk_rows)) for i in range(0, len(val), chunk_rows))
    total = len(val)
  elif os.path.isdir(path):
    chunks = [pts.read_folder(path, layout)[0]]
  else:
    chunks = kaggle.read_training_chunks(path, chunk_rows, bad_labels, layout)
  name = os.path.basename(os.path.normpath(path))
  with tqdm(total=total, unit=" faces", desc=f"scoring {name}", leave=False,
            disable=None) as bar:
    for faces in chunks:
      faces = _trained_only(faces, trained)
      predictions.append(model.predict(faces.images, tta=tta))
      if scorer:
        scorer.add(faces)
      targets.append(faces.targets)
      mask.append(faces.mask)
      if sum(map(len, shown)) < _GRID:
        shown.append(faces.take(slice(0, _GRID - sum(map(len, shown)))))
      bar.update(len(faces))
  predictions, targets, mask = map(np.concatenate, (predictions, targets, mask))
  if not mask.any():
    raise DataError(f"{path}: no keypoint labels to score (of the keypoints this model "
                         "was trained on)")
  metrics = metrics_lib.keypoint_metrics(predictions, targets, mask, layout)
  results = dict(metrics, num_faces=len(predictions), keypoints=layout.name,
                 untrained_keypoints=model.untrained_names())
  results["per_face_nme"] = metrics_lib.per_face_nme(predictions, targets, mask,
                                                     layout)[0].tolist()
  results.update(_mean_shape_baseline(model.workdir, layout, targets, mask))
  results["beats_mean_shape"] = metrics_lib.no_better_than_mean_shape(
      results["rmse"], results["mean_shape_rmse"]) is None
  results.update(split=split, is_training_file=training_file)
  if training_file and split == "all":
    train, val = held_out
    results["training_faces"] = len(train)
    if len(val):
      val = _trained_only(val, trained)
      figures = metrics_lib.keypoint_metrics(model.predict(val.images, tta=tta), val.targets,
                                             val.mask, layout)
      results["val_split"] = {"num_faces": len(val), "rmse": figures["rmse"]}
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


def warning_lines(results: dict, path: str) -> list[str]:
  """One line for each reason not to trust ``results`` (``evaluate``'s) of ``path``: a model no
  better than the mean shape; the run's own training faces among those scored."""
  lines = []
  unlearnt = metrics_lib.no_better_than_mean_shape(results["rmse"], results["mean_shape_rmse"])
  if unlearnt:
    own = results["mean_shape_from"] == "scored file"
    lines.append(f"warning: {unlearnt} on {path}" + (
        " (the mean shape of the file's own labels: the workdir predates the record of its "
        "training split's)" if own else ""))
  if results["is_training_file"] and results["split"] == "all":
    val = results.get("val_split")
    held_out = (f"its {val['num_faces']} held-out validation faces score RMSE {val['rmse']:.2f} "
                "px: use --split=val to score only the held-out faces") if val else (
                    "the run held out none (data.val_fraction=0)")
    lines.append(f"warning: {path} is the file this run trained on: "
                 f"{results['training_faces']} of its {results['num_faces']} faces were "
                 f"training faces, so these figures flatter the model; {held_out}")
  return lines


def run(workdir: str, path: str, which: str = "best", tta: bool | None = None,
        perturbed: bool = False, bad_labels: str = "error",
        tta_rotations: tuple[float, ...] | None = None, split: str = "all") -> dict:
  """Restores, scores, prints the tables and the warnings (stderr) and writes the JSON and
  plots; returns the JSON.

  ``tta=None`` follows the run's ``config.tta``, ``tta_rotations=None`` its
  ``config.tta_rotations`` (the turned views of the test-time average); ``split``: ``SPLITS``.
  """
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found")  # Before spending time on the model.
  model = predictor.load(workdir, which)
  tta = model.use_tta(tta, tta_rotations)
  metrics, shown, shown_predictions = evaluate(model, path, tta, perturbed=perturbed,
                                               bad_labels=bad_labels, split=split)
  results = files.jsonable(dict(csv=os.path.abspath(path), workdir=os.path.abspath(workdir),
                                      checkpoint=which, step=model.step, tta=tta,
                                      tta_rotations=model.config.tta_rotations if tta else (),
                                      **metrics))
  stem = file_stem(path) + ("_val" if split == "val" else "")
  json_path = os.path.join(workdir, f"eval_{stem}.json")
  png_path = os.path.join(workdir, f"eval_{stem}.png")
  files.write_json(json_path, results)
  name = os.path.basename(path) + (" (held-out split)" if split == "val" else "")
  title = f"{name}: RMSE {results['rmse']:.2f} px (step {model.step}" + (
      ", TTA)" if tta else ")")
  plots.save_figure(plots.plot_grid(shown.images, shown_predictions, shown.targets, shown.mask,
                                    title=title, layout=model.layout,
                                    shown=model.trained[::2] > 0), png_path)
  written = [json_path, png_path, os.path.join(workdir, f"eval_{stem}_ced.png")]
  plots.save_figure(plots.plot_ced(results["per_face_nme"], results["nme_normaliser"],
                                     title=name), written[-1])
  extra = ""
  if perturbed:
    written.append(os.path.join(workdir, f"eval_{stem}_robustness.png"))
    plots.save_figure(robustness.plot(results["robustness"], title=title), written[-1])
    extra = "\n\nrobustness:\n" + robustness.table(results["robustness"])
  scored = path if split == "all" else f"{path} (this run's held-out validation split)"
  print(f"{model.describe(tta)}\nfile {scored}: {table(results)}{extra}\n\nwrote "
        f"{', '.join(written)}")
  for line in warning_lines(results, path):
    print(line, file=sys.stderr)
  return results

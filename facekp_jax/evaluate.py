"""Scores a trained workdir on any Kaggle-layout file.

  python -m facekp_jax.evaluate --workdir=W --csv=FILE [--checkpoint=best|latest] [--tta]

``--tta`` / ``--no-tta``: flip test-time augmentation (default: the run's ``config.tta``).

FILE has Kaggle's training.csv layout (the 30 keypoint columns and ``Image``;
``.csv`` or ``.csv.gz``); empty cells are missing labels and are not scored, so
files with only some keypoints work. The file is streamed in chunks. Prints the
RMSE in pixels (overall and per keypoint), the NME and the number of coordinates
scored, and writes ``W/eval_<file stem>.json`` and a 4x4 grid of the file's
first faces, ``W/eval_<file stem>.png``. Bad input: one line, exit code 2.
"""

from __future__ import annotations

import math
import os

import numpy as np

from facekp_jax import data, inference, keypoints, report

_GRID = 16


def file_stem(path: str) -> str:
  """``dir/training.csv.gz`` -> ``training``."""
  name = os.path.basename(path)
  for ending in (".gz", ".csv"):
    if name.lower().endswith(ending):
      name = name[:-len(ending)]
  return name or "file"


def evaluate(model: inference.Model, path: str, tta: bool = False,
             chunk_rows: int | None = None) -> tuple[dict, data.Faces, np.ndarray]:
  """Scores ``model`` on the labelled faces of ``path``, streamed in chunks.

  Args:
    model: a restored model.
    path: a Kaggle training.csv-layout file.
    tta: flip test-time augmentation.
    chunk_rows: faces per chunk (default: 8 evaluation batches).

  Returns:
    (results, the first 16 faces, their predictions). ``results`` holds ``rmse``,
    ``nme``, ``per_keypoint_rmse``, ``count`` (coordinates scored) and ``num_faces``.

  Raises:
    data.DataError: a malformed file, or one without any keypoint label.
  """
  chunk_rows = chunk_rows or 8 * model.trainer.eval_batch_size
  predictions, targets, mask, shown = [], [], [], []
  for faces in data.read_training_chunks(path, chunk_rows):
    predictions.append(model.predict(faces.images, tta=tta))
    targets.append(faces.targets)
    mask.append(faces.mask)
    if sum(map(len, shown)) < _GRID:
      shown.append(faces.take(slice(0, _GRID - sum(map(len, shown)))))
  predictions, targets, mask = map(np.concatenate, (predictions, targets, mask))
  if not mask.any():
    raise data.DataError(f"{path}: no keypoint labels to score")
  metrics = report.keypoint_metrics(predictions, targets, mask)
  results = dict(metrics, num_faces=len(predictions))
  shown = data.Faces(*(np.concatenate([getattr(f, a) for f in shown])
                       for a in ("images", "targets", "mask")))
  return results, shown, predictions[:len(shown)]


def _finite(value):
  """NaN -> None, so the JSON stays standard."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  return None if isinstance(value, float) and not math.isfinite(value) else value


def table(results: dict) -> str:
  """A readable summary: overall figures, then one line per keypoint."""
  nme = "n/a (no face with both eye centres)" if results["nme"] is None else f"{results['nme']:.4f}"
  lines = [f"{results['num_faces']} faces, {results['count']} coordinates scored",
           f"RMSE {results['rmse']:.3f} px   NME {nme}", "",
           f"{'keypoint':<28}{'RMSE (px)':>10}"]
  for name in keypoints.KEYPOINT_NAMES:
    value = results["per_keypoint_rmse"][name]
    lines.append(f"{name:<28}{'-' if value is None else f'{value:.3f}':>10}")
  return "\n".join(lines)


def run(workdir: str, path: str, which: str = "best", tta: bool | None = None) -> dict:
  """Restores, scores, prints the table and writes the JSON and the grid; returns the JSON.

  ``tta=None`` follows the run's ``config.tta``.
  """
  if not os.path.isfile(path):
    raise data.DataError(f"{path}: file not found")  # Before spending time on the model.
  model = inference.load(workdir, which)
  tta = model.config.get("tta", False) if tta is None else tta
  metrics, shown, shown_predictions = evaluate(model, path, tta)
  results = _finite(dict(csv=os.path.abspath(path), workdir=os.path.abspath(workdir),
                         checkpoint=which, step=model.step, tta=tta, **metrics))
  stem = file_stem(path)
  json_path = os.path.join(workdir, f"eval_{stem}.json")
  png_path = os.path.join(workdir, f"eval_{stem}.png")
  report.write_json(json_path, results)
  title = f"{os.path.basename(path)}: RMSE {results['rmse']:.2f} px (step {model.step}" + (
      ", flip TTA)" if tta else ")")
  report.save_figure(report.plot_grid(shown.images, shown_predictions, shown.targets, shown.mask,
                                      title=title), png_path)
  print(f"{model.describe(tta)}\nfile {path}: {table(results)}\n\nwrote {json_path}, {png_path}")
  return results


def main(argv=None) -> None:
  parser = inference.ArgumentParser(
      prog="python -m facekp_jax.evaluate",
      description="Score a trained workdir on a Kaggle-layout file (masked cells not scored).")
  inference.add_model_arguments(parser)
  parser.add_argument("--csv", required=True, help="Kaggle training.csv-layout file (.csv/.gz)")
  args = parser.parse_args(argv)
  inference.quiet_libraries()
  try:
    run(args.workdir, args.csv, args.checkpoint, args.tta)
  except inference.USER_ERRORS as e:
    inference.fail(e)
  except OSError as e:  # Writing into the workdir.
    inference.fail(f"{e.filename or ''}: {e.strerror or e}")


if __name__ == "__main__":
  main()

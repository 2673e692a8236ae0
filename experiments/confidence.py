"""Is a keypoint's confidence calibrated? Error by score on real faces the model never saw.

  python -m experiments.confidence                     # the shipped model, 300W's 2012 faces
  python -m experiments.confidence --model=WORKDIR     # a workdir or packed model of mtfl5

A heatmap model scores each keypoint by ``Predictor.confidences``: the share of its map's mass
within a disc about the soft-argmax (``model.heads.confidence``, radius
``heads.CONFIDENCE_RADIUS``) times how well the TTA's views agree on it
(``model.tta.agreement``); ``--radii``: discs alone, compared. A face's score is the mean of
its keypoints'. Scored here on the
faces of ../shared/data/w300_train (Helen, LFPW, AFW: 2012 photos of sources the shipped model
did not train on) through the 5 points they share with MTFL's layout: eye centres (the mean of
each eye's 6 points), nose tip (point 30) and mouth corners (48, 54), each face framed as MTFL's
faces are (``data.pts.FRAMING["mtfl5"]``). Keypoints are predicted as the model predicts
(its TTA); the error is the face's NME (inter-pupil) and each keypoint's distance over the
same eye distance. What calibration means here (issue 29): the rank correlation of score and
error (Spearman, per face and per keypoint), and the share of the failures (NME > 0.10) held
by the lowest-scored 10 % of faces; the mean error by score decile is plotted.
Writes ``results/confidence/{table.md, deciles.png, results.json}``.
"""

from __future__ import annotations

import glob
import os
import sys

import cv2
import numpy as np
from absl import flags

from experiments import ablate
from facekp_jax import cli
from facekp_jax.core import files, metrics, plots
from facekp_jax.core.errors import DataError
from facekp_jax.data import pts
from facekp_jax.model import apply, heads, resnet
from facekp_jax.serving import predictor

W300 = os.path.join(ablate.ROOT, "..", "shared", "data", "w300_train")
OUT = os.path.join(ablate.DEFAULT_OUT, "confidence")
# 300W's 68 points -> MTFL's 5 in its order (left_eye_center = the subject's left = 300W's
# 42-47, ... mouth_left_corner = 54): each a mean of these points.
FROM_300W = ((42, 43, 44, 45, 46, 47), (36, 37, 38, 39, 40, 41), (30,), (54,), (48,))
FAILURE = metrics.FAILURE_THRESHOLD


def image_files(folder: str) -> list[str]:
  """The images under ``folder`` with a .pts beside them, relative paths, sorted."""
  names = sorted(os.path.relpath(p, folder)
                 for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                 if p.lower().endswith(pts.IMAGE_EXTENSIONS)
                 and os.path.exists(os.path.splitext(p)[0] + ".pts"))
  if not names:
    raise DataError(f"{folder}: no image with a .pts beside it")
  return names


def read_300w_five(folder: str, name: str) -> tuple[np.ndarray, np.ndarray]:
  """One 300W photo as uint8 grey and its 68 points as MTFL's 5 (``FROM_300W``), (5, 2) in
  its pixels."""
  path = os.path.join(folder, name)
  image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
  if image is None:
    raise DataError(f"{path}: not an image OpenCV can read")
  p68 = pts.read_pts(os.path.splitext(path)[0] + ".pts")
  if len(p68) != 68:
    raise DataError(f"{os.path.splitext(path)[0]}.pts: {len(p68)} points, not 300W's 68")
  return image, np.array([p68[list(group)].mean(axis=0) for group in FROM_300W])


def read_w300_as_mtfl5(folder: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Every image with a 68-point .pts beside it under ``folder``: (N, 96, 96) uint8 faces
  framed as MTFL's, (N, 5, 2) their 5 points in the frame, and the files' relative paths."""
  names = image_files(folder)
  images, points = [], []
  for name in names:
    framed, at = pts.frame_face(*read_300w_five(folder, name), "mtfl5")
    images.append(framed)
    points.append(at)
  return np.stack(images), np.stack(points), names


def rank_correlation(a, b) -> float:
  """Spearman's rank correlation (ties broken by order: the scores are continuous)."""
  ra = np.argsort(np.argsort(np.asarray(a, np.float64)))
  rb = np.argsort(np.argsort(np.asarray(b, np.float64)))
  return float(np.corrcoef(ra, rb)[0, 1])


def calibration(scores: np.ndarray, errors: np.ndarray) -> dict:
  """Per-face figures of ``scores`` (N,) against ``errors`` (N,) NME."""
  order = np.argsort(scores)
  lowest = order[:max(1, len(order) // 10)]
  failed = errors > FAILURE
  deciles = np.array_split(order, min(10, len(order)))  # Fewer faces, fewer bins.
  return {"spearman": rank_correlation(scores, errors),
          "failures": int(failed.sum()),
          "failures_in_lowest_10pct": float(failed[lowest].sum() / max(failed.sum(), 1)),
          "decile_score": [float(scores[d].mean()) for d in deciles],
          "decile_nme": [float(errors[d].mean()) for d in deciles],
          "decile_fr": [float(failed[d].mean()) for d in deciles]}


def measure(model_path: str | None, folder: str, radii) -> dict:
  model = predictor.load(model_path)
  if model.layout.name != "mtfl5":
    raise DataError(f"{model.workdir}: a model of mtfl5's keypoints is needed (this one's are "
                    f"{model.layout.name})")
  if model.scorer is None:
    raise DataError(f"{model.workdir}: a regression model has no keypoint confidence")
  images, points, names = read_w300_as_mtfl5(folder)
  tta = model.use_tta()
  coords = model.keypoints(images, tta=tta)  # (N, 5, 2)
  eyes = np.linalg.norm(points[:, 0] - points[:, 1], axis=1)
  point_error = np.linalg.norm(coords - points, axis=2) / eyes[:, None]  # (N, 5)
  nme = point_error.mean(axis=1)
  record = {"model": shown(model), "faces": len(names), "tta": tta,
            "nme": float(nme.mean()), "fr": float(np.mean(nme > FAILURE)), "radii": {}}
  record["package"] = scored(model.confidences(images), nme, point_error)
  x = images[..., None].astype(np.float32) / 255.0
  net = resnet.create_model(model.config, dtype=resnet.compute_dtype(model.config))
  for radius in radii:
    scorer = apply.Inference(net, model.inference.mesh, model.config.eval_batch_size,
                             apply.confidence_forward(net, model.config.model.heatmap_margin,
                                                      radius))
    scores = np.asarray(scorer(model.variables, x), np.float64)  # (N, 5)
    record["radii"][f"{radius:g}"] = scored(scores, nme, point_error)
  return record


def scored(scores: np.ndarray, nme: np.ndarray, point_error: np.ndarray) -> dict:
  """Calibration of keypoint scores (N, 5): the face's mean and least against its NME, and each
  keypoint's against its own error."""
  return {"face_mean": calibration(scores.mean(axis=1), nme),
          "face_min": calibration(scores.min(axis=1), nme),
          "keypoint_spearman": [rank_correlation(scores[:, k], point_error[:, k])
                                for k in range(scores.shape[1])],
          "keypoint_spearman_pooled": rank_correlation(scores.ravel(), point_error.ravel())}


def shown(model: predictor.Predictor) -> str:
  """A model's path as a table shows it: the package's own relative to the repository."""
  path = os.path.relpath(model.workdir, ablate.ROOT)
  return model.workdir if path.startswith("..") else path


def write(record: dict, out: str, command: str) -> None:
  os.makedirs(out, exist_ok=True)
  files.write_json(os.path.join(out, "results.json"), files.jsonable(record))
  lines = [
      "# Keypoint confidence against error (300W's faces through MTFL's 5 points)", "",
      f"- model: `{record['model']}`; {record['faces']} faces; TTA {record['tta']}; "
      f"NME {record['nme']:.4f} (inter-pupil), FR@0.10 {record['fr']:.3f}",
      f"- command: `{command}`", "",
      "| keypoint score | face score | Spearman (face score, NME) | failures | share of "
      "failures in the lowest-scored 10 % | Spearman per keypoint (pooled) |",
      "|---|---|---|---|---|---|"]
  rows = [("the package's (disc of "
           f"{heads.CONFIDENCE_RADIUS:g} px x the views' agreement)", record["package"])]
  rows += [(f"disc of {radius} px only", r) for radius, r in record["radii"].items()]
  for name, r in rows:
    for kind in ("face_mean", "face_min"):
      f = r[kind]
      lines.append(f"| {name} | {kind.split('_')[1]} of its keypoints | {f['spearman']:+.3f} "
                   f"| {f['failures']} | {f['failures_in_lowest_10pct']:.2f} | "
                   f"{r['keypoint_spearman_pooled']:+.3f} |")
  with open(os.path.join(out, "table.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, r in [("the package's", record["package"]),
                  *((f"disc {radius} px only", r) for radius, r in record["radii"].items())]:
    f = r["face_mean"]
    bins = range(1, len(f["decile_nme"]) + 1)
    axes[0].plot(bins, f["decile_nme"], marker="o", label=name)
    axes[1].plot(bins, f["decile_fr"], marker="o", label=name)
  axes[0].set(xlabel="face score decile (1: lowest)", ylabel="mean NME (inter-pupil)")
  axes[1].set(xlabel="face score decile (1: lowest)", ylabel=f"share with NME > {FAILURE}")
  axes[0].legend()
  plots.save_figure(fig, os.path.join(out, "deciles.png"))


def main(argv=None) -> dict:
  fv = cli.command_flags()
  flags.DEFINE_string("model", None, "a workdir or packed model (default: the shipped one)",
                      flag_values=fv)
  flags.DEFINE_string("w300", W300, "300W's faces (.jpg + .pts, any subfolders)",
                      flag_values=fv)
  flags.DEFINE_list("radii", ["4", "8", "12", "16"], "disc radii (px) compared", flag_values=fv)
  flags.DEFINE_string("out", OUT, "where the table, plot and JSON go", flag_values=fv)
  cli.parse(fv, "python -m experiments.confidence", __doc__.splitlines()[0], argv)
  cli.quiet_libraries()
  with cli.user_errors():
    record = measure(fv.model, fv.w300, [float(r) for r in fv.radii])
    write(record, fv.out, " ".join(["python -m experiments.confidence",
                                    *(sys.argv[1:] if argv is None else argv)]))
  print({k: v for k, v in record.items() if k not in ("radii", "package")})
  print("package face score: Spearman", round(record["package"]["face_mean"]["spearman"], 3),
        "lowest-10 % share of failures", record["package"]["face_mean"]["failures_in_lowest_10pct"])
  return record


if __name__ == "__main__":
  main()

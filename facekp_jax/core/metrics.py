"""Keypoint metrics in pixels and the landmark conventions: RMSE, NME, FR and AUC.

Each function takes the faces' ``core.keypoints.Layout`` (default: Kaggle's 15). Every figure
comes from masked sums and counts, so missing coordinates never count: RMSE over present
coordinates, per-keypoint RMSE over each keypoint's present coordinates, and the per-face
normalised mean error (NME): the mean Euclidean error of a face's present keypoints divided by
that face's true normalising distance. The normaliser is the layout's (``Layout.normalisers``):
the 300-W / WFLW convention, the inter-ocular distance (outer eye corners), where the faces have
both outer corners; where they have fewer of those than of both eye centres (the Kaggle rows
with 4 points) or the layout has no corners (the 5-point sets), the inter-pupil distance (eye
centres). Each result says which (``nme_normaliser``) and over how many faces (``nme_faces``).
From the per-face errors: the failure rate FR@0.10 (share of faces with NME > 0.10) and
AUC@0.10, the area under the cumulative error distribution up to 0.10, divided by 0.10 (1: every
face perfect).
"""

from __future__ import annotations

import numpy as np

from facekp_jax.core import keypoints
from facekp_jax.core.faces import Faces

FAILURE_THRESHOLD = 0.10


def _points(a, layout: keypoints.Layout) -> np.ndarray:
  return np.asarray(a, np.float64).reshape(-1, layout.num_keypoints, 2)


def per_face_nme(predictions, targets, mask,
                 layout: keypoints.Layout = keypoints.DEFAULT) -> tuple[np.ndarray, str]:
  """Per-face NME of the faces that have the normaliser's two points; (errors, normaliser).

  The normaliser is the first of ``layout.normalisers`` that as many faces have as any later
  one (and at least one face), else the last.
  """
  p, t = _points(predictions, layout), _points(targets, layout)
  present = _points(mask, layout).min(axis=2) > 0
  n_present = present.sum(axis=1)

  def usable(pair):
    d = np.linalg.norm(t[:, pair[0]] - t[:, pair[1]], axis=1)
    return present[:, pair[0]] & present[:, pair[1]] & (d > 0) & (n_present > 0), d

  counts = [int(usable(pair)[0].sum()) for _, pair in layout.normalisers]
  choice = next((i for i, c in enumerate(counts) if c >= max(counts[i + 1:] + [1])),
                len(counts) - 1)
  name, pair = layout.normalisers[choice]
  ok, d = usable(pair)
  err = (np.linalg.norm(p - t, axis=2) * present).sum(axis=1)
  return err[ok] / n_present[ok] / d[ok], name


def failure_rate(errors: np.ndarray, threshold: float = FAILURE_THRESHOLD) -> float:
  """Share of faces whose NME exceeds ``threshold``."""
  return float(np.mean(np.asarray(errors) > threshold)) if len(errors) else float("nan")


def auc(errors: np.ndarray, threshold: float = FAILURE_THRESHOLD) -> float:
  """Area under the cumulative error distribution on [0, threshold], divided by threshold.

  ``int_0^T P(e <= x) dx = E[max(0, T - e)]``, so this is exact, with no binning.
  """
  errors = np.asarray(errors, np.float64)
  return float(np.mean(np.maximum(0.0, 1.0 - errors / threshold))) if len(errors) else float(
      "nan")


def normalized_mean_error(predictions, targets, mask,
                          layout: keypoints.Layout = keypoints.DEFAULT) -> float:
  """Mean per-face NME (``per_face_nme``'s normaliser); NaN when no face has one."""
  errors, _ = per_face_nme(predictions, targets, mask, layout)
  return float(errors.mean()) if len(errors) else float("nan")


def keypoint_metrics(predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                     layout: keypoints.Layout = keypoints.DEFAULT) -> dict:
  """RMSE, per-keypoint RMSE, NME, FR@0.10 and AUC@0.10 of (N, 2K) pixel predictions."""
  predictions, targets, mask = (np.asarray(a, np.float64) for a in (predictions, targets, mask))
  sq = mask * np.square(predictions - targets)
  count = mask.sum()
  per_kp_sse = sq.reshape(-1, layout.num_keypoints, 2).sum(axis=(0, 2))
  per_kp_count = mask.reshape(-1, layout.num_keypoints, 2).sum(axis=(0, 2))
  per_kp = {name: (float(np.sqrt(s / c)) if c else None)
            for name, s, c in zip(layout.names, per_kp_sse, per_kp_count)}
  errors, normaliser = per_face_nme(predictions, targets, mask, layout)
  return {"rmse": float(np.sqrt(sq.sum() / count)) if count else float("nan"),
          "nme": float(errors.mean()) if len(errors) else float("nan"),
          "nme_normaliser": normaliser, "nme_faces": int(len(errors)),
          "fr_0.10": failure_rate(errors), "auc_0.10": auc(errors),
          "per_keypoint_rmse": per_kp, "count": int(count)}


def mean_shape_prediction(train: Faces, n: int) -> np.ndarray:
  """The trivial baseline: every face gets the training set's mean of each coordinate."""
  mean = (train.targets * train.mask).sum(0) / np.maximum(train.mask.sum(0), 1)
  return np.tile(mean.astype(np.float32), (n, 1))


def no_better_than_mean_shape(rmse: float | None, mean_shape_rmse: float | None) -> str | None:
  """A warning where a model's RMSE is no better than the mean-shape baseline's (the model has
  not learnt yet, or the labels disagree with the faces), else None."""
  if rmse is None or mean_shape_rmse is None or not rmse >= mean_shape_rmse:
    return None
  return (f"this model (RMSE {rmse:.3f} px) is no better than the mean shape (RMSE "
          f"{mean_shape_rmse:.3f} px): it has not learnt yet (train longer), or the labels do "
          "not match the faces")

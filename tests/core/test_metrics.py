import numpy as np
import pytest

from facekp_jax.core import keypoints, metrics
from facekp_jax.core.faces import Faces

K = keypoints.KAGGLE
LEFT, RIGHT = K.index("left_eye_center"), K.index("right_eye_center")


def test_metrics_count_only_present_coordinates():
  targets = np.full((2, 30), 50.0)
  predictions = targets.copy()
  mask = np.zeros((2, 30))
  mask[0, :4] = 1  # Both eye centres of face 0.
  predictions[0, 0] += 3.0  # left_eye_center_x off by 3 px.
  predictions[:, 10:] += 100.0  # Huge errors, but on masked coordinates only.
  predictions[1] += 7.0  # Face 1 has no labels at all.
  m = metrics.keypoint_metrics(predictions, targets, mask)
  assert m["count"] == 4
  assert m["rmse"] == pytest.approx(np.sqrt(9 / 4))
  assert m["per_keypoint_rmse"]["left_eye_center"] == pytest.approx(np.sqrt(9 / 2))
  assert m["per_keypoint_rmse"]["right_eye_center"] == 0.0
  assert m["per_keypoint_rmse"]["nose_tip"] is None


def test_nme_divides_by_true_inter_ocular_distance():
  t = np.zeros((1, 15, 2))
  t[0, LEFT] = (70, 40)
  t[0, RIGHT] = (30, 40)  # Eyes 40 px apart.
  t[0, 10] = (50, 60)
  p = t.copy()
  p[0, 10] += (3, 4)  # Nose off by 5 px.
  mask = np.zeros((1, 15, 2))
  mask[0, [LEFT, RIGHT, 10]] = 1
  nme = metrics.normalized_mean_error(p.reshape(1, 30), t.reshape(1, 30), mask.reshape(1, 30))
  assert nme == pytest.approx((5 / 3) / 40)


def test_mean_shape_prediction_ignores_missing_values():
  targets = np.array([[10.0] * 30, [20.0] * 30], np.float32)
  mask = np.ones_like(targets)
  mask[1, 0] = 0
  faces = Faces(np.zeros((2, 96, 96, 1), np.float32), targets * mask, mask)
  pred = metrics.mean_shape_prediction(faces, 3)
  assert pred.shape == (3, 30) and pred[0, 0] == 10.0 and pred[0, 1] == 15.0


def test_nme_uses_outer_corners_when_faces_have_them():
  t = np.zeros((2, 15, 2))
  left, right = dict(K.normalisers)["inter_ocular"]
  t[:, left] = (80, 40)
  t[:, right] = (20, 40)  # Outer corners 60 px apart.
  t[:, LEFT] = (70, 40)
  t[:, RIGHT] = (30, 40)  # Eye centres 40 px apart.
  p = t.copy()
  p[:, LEFT] += (6, 8)  # 10 px off, on each face.
  mask = np.ones((2, 15, 2))
  mask[:, 6:] = 0  # Only the eyes' six points.
  m = metrics.keypoint_metrics(p.reshape(2, 30), t.reshape(2, 30), mask.reshape(2, 30))
  assert m["nme_normaliser"] == "inter_ocular" and m["nme_faces"] == 2
  assert m["nme"] == pytest.approx((10 / 6) / 60)
  mask[:, [left, right]] = 0  # Without the corners: the eye centres normalise.
  m = metrics.keypoint_metrics(p.reshape(2, 30), t.reshape(2, 30), mask.reshape(2, 30))
  assert m["nme_normaliser"] == "inter_pupil"
  assert m["nme"] == pytest.approx((10 / 4) / 40)


def test_failure_rate_and_auc_on_a_fixed_error_list():
  errors = np.array([0.0, 0.02, 0.05, 0.10, 0.2])
  assert metrics.failure_rate(errors) == pytest.approx(1 / 5)  # Only 0.2 exceeds 0.10.
  # Area under P(e <= x) on [0, 0.1] / 0.1 = mean(max(0, 1 - e / 0.1)).
  assert metrics.auc(errors) == pytest.approx((1 + 0.8 + 0.5 + 0 + 0) / 5)
  grid = np.linspace(0, 0.1, 100001)  # The same area by brute force over the CED.
  ced = (errors[None, :] <= grid[:, None]).mean(axis=1)
  assert metrics.auc(errors) == pytest.approx(np.trapezoid(ced, grid) / 0.1, abs=1e-4)



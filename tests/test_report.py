import numpy as np
import pytest

from facekp_jax import keypoints, report
from facekp_jax.data import Faces


def test_metrics_count_only_present_coordinates():
  targets = np.full((2, 30), 50.0)
  predictions = targets.copy()
  mask = np.zeros((2, 30))
  mask[0, :4] = 1  # Both eye centres of face 0.
  predictions[0, 0] += 3.0  # left_eye_center_x off by 3 px.
  predictions[:, 10:] += 100.0  # Huge errors, but on masked coordinates only.
  predictions[1] += 7.0  # Face 1 has no labels at all.
  m = report.keypoint_metrics(predictions, targets, mask)
  assert m["count"] == 4
  assert m["rmse"] == pytest.approx(np.sqrt(9 / 4))
  assert m["per_keypoint_rmse"]["left_eye_center"] == pytest.approx(np.sqrt(9 / 2))
  assert m["per_keypoint_rmse"]["right_eye_center"] == 0.0
  assert m["per_keypoint_rmse"]["nose_tip"] is None


def test_nme_divides_by_true_inter_ocular_distance():
  t = np.zeros((1, 15, 2))
  t[0, keypoints.LEFT_EYE] = (70, 40)
  t[0, keypoints.RIGHT_EYE] = (30, 40)  # Eyes 40 px apart.
  t[0, 10] = (50, 60)
  p = t.copy()
  p[0, 10] += (3, 4)  # Nose off by 5 px.
  mask = np.zeros((1, 15, 2))
  mask[0, [keypoints.LEFT_EYE, keypoints.RIGHT_EYE, 10]] = 1
  nme = report.normalized_mean_error(p.reshape(1, 30), t.reshape(1, 30), mask.reshape(1, 30))
  assert nme == pytest.approx((5 / 3) / 40)


def test_mean_shape_prediction_ignores_missing_values():
  targets = np.array([[10.0] * 30, [20.0] * 30], np.float32)
  mask = np.ones_like(targets)
  mask[1, 0] = 0
  faces = Faces(np.zeros((2, 96, 96, 1), np.float32), targets * mask, mask)
  pred = report.mean_shape_prediction(faces, 3)
  assert pred.shape == (3, 30) and pred[0, 0] == 10.0 and pred[0, 1] == 15.0


def test_run_writer_writes_files_atomically(tmp_path):
  writer = report.RunWriter(str(tmp_path / "w"))
  record = {"step": 10, "train_loss": 4.0, "train_rmse": 2.0, "val_rmse": 3.0, "val_nme": 0.1}
  writer.append_metrics(dict(record, epoch=1))
  writer.append_metrics(dict(record, epoch=2))
  writer.write_results({"val_rmse": 1.5})
  assert (tmp_path / "w" / "metrics.jsonl").read_text().count("\n") == 2
  writer.rewrite_metrics([dict(record, epoch=1)])  # A resume drops epochs past its checkpoint.
  assert (tmp_path / "w" / "metrics.jsonl").read_text().count("\n") == 1
  writer.close()
  assert not [p for p in (tmp_path / "w").iterdir() if p.name.startswith(".tmp-")]
  off = report.RunWriter(str(tmp_path / "off"), enabled=False)
  off.write_results({"x": 1})
  assert not (tmp_path / "off").exists()


def test_config_differences_ignore_fields_a_saved_run_predates():
  import ml_collections
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": (1, 2)}, "new_field": False})
  assert report.config_differences({"a": 1, "b": {"c": [1, 2]}}, config) == []
  assert report.config_differences({"a": 2, "b": {"c": [1, 2]}}, config) == ["a: 2 -> 1"]
  assert report.config_differences({"a": 1, "b": {"c": [1, 2]}, "gone": 3}, config) == [
      "gone: 3 -> '<absent>'"]

"""Tests for the built-in synthetic faces."""

import os

import numpy as np
import pandas as pd
import pytest

from facekp_jax import synthesize
from facekp_jax.core import keypoints
from facekp_jax.data import kaggle, synthetic

# Columns kept by Kaggle's dominant 4-point label pattern (4755 of 7049 rows).
_FOUR_POINTS = ("left_eye_center", "right_eye_center", "nose_tip", "mouth_center_bottom_lip")


@pytest.fixture(scope="module")
def faces():
  return synthetic.generate(200, seed=3)


def _mean_patch(images, coords, k, radius, shift=(0.0, 0.0)):
  """Mean of the images cut out around keypoint ``k`` (rounded to a pixel), noise averaged out."""
  patches = []
  for image, row in zip(images, coords):
    x, y = (int(round(row[2 * k + a] + shift[a])) for a in (0, 1))
    if radius <= x < 96 - radius and radius <= y < 96 - radius:
      patches.append(image[y - radius:y + radius + 1, x - radius:x + radius + 1])
  return np.mean(np.asarray(patches, np.float64), axis=0)


def _extreme_offset(patch, darkest=True):
  """(dx, dy) of the darkest (or brightest) pixel from the patch centre."""
  row, col = np.unravel_index(np.argmin(patch) if darkest else np.argmax(patch), patch.shape)
  radius = patch.shape[0] // 2
  return col - radius, row - radius


def test_shapes_and_dtypes():
  images, coords = synthetic.generate(4)
  assert images.shape == (4, 96, 96) and images.dtype == np.uint8
  assert coords.shape == (4, 30) and coords.dtype == np.float32
  assert not np.isnan(coords).any()
  assert images.std() > 10  # Not blank.
  empty_images, empty_coords = synthetic.generate(0)
  assert empty_images.shape == (0, 96, 96) and empty_coords.shape == (0, 30)


def test_deterministic_and_prefix():
  images, coords = synthetic.generate(6, seed=5)
  again = synthetic.generate(6, seed=5)
  np.testing.assert_array_equal(images, again[0])
  np.testing.assert_array_equal(coords, again[1])
  longer = synthetic.generate(9, seed=5)
  np.testing.assert_array_equal(images, longer[0][:6])
  np.testing.assert_array_equal(coords, longer[1][:6])
  other = synthetic.generate(6, seed=6)
  assert not np.array_equal(coords, other[1]) and not np.array_equal(images, other[0])


def test_keypoints_inside_image_with_kaggle_framing(faces):
  _, coords = faces
  assert coords.min() >= 0 and coords.max() <= 95
  left, right = coords[:, 0:2], coords[:, 2:4]
  eye_dist = np.hypot(*(left - right).T)
  assert 32 < eye_dist.mean() < 40 and 2 < eye_dist.std() < 6
  np.testing.assert_allclose(((left + right) / 2).mean(axis=0), (48.3, 37.8), atol=1.0)
  assert (left[:, 0] > right[:, 0]).all()  # Subject's left eye is on the image right.


def test_mean_shape_rmse_is_not_trivial(faces):
  _, coords = faces
  rmse = np.sqrt(np.mean((coords - coords.mean(axis=0)) ** 2))
  assert rmse >= 3.0


@pytest.mark.parametrize("name", ["left_eye_center", "right_eye_center"])
def test_pupils_are_at_eye_centres(faces, name):
  images, coords = faces
  k = keypoints.KAGGLE.names.index(name)
  dx, dy = _extreme_offset(_mean_patch(images, coords, k, radius=5))
  assert max(abs(dx), abs(dy)) <= 1
  # The check has power: labels 3 px off their feature fail it.
  dx, dy = _extreme_offset(_mean_patch(images, coords, k, radius=5, shift=(3.0, 0.0)))
  assert max(abs(dx), abs(dy)) > 1


def test_other_features_at_their_keypoints(faces):
  images, coords = faces
  index = keypoints.KAGGLE.names.index
  dx, dy = _extreme_offset(_mean_patch(images, coords, index("nose_tip"), 4), darkest=False)
  assert max(abs(dx), abs(dy)) <= 1  # The highlight on the tip.
  for corner in ("mouth_left_corner", "mouth_right_corner"):
    dx, dy = _extreme_offset(_mean_patch(images, coords, index(corner), 4))
    assert max(abs(dx), abs(dy)) <= 1  # Where the lips meet.
  for end in ("left_eyebrow_inner_end", "right_eyebrow_inner_end"):
    patch = _mean_patch(images, coords, index(end), 4)
    assert patch[4, 4] < patch[0, 4] and patch[4, 4] < patch[8, 4]  # A brow, not bare skin.


def test_missing_labels_follow_kaggle_patterns():
  images, coords = synthetic.generate(300, seed=1, missing=True)
  full_images, full_coords = synthetic.generate(300, seed=1)
  np.testing.assert_array_equal(images, full_images)  # The face is still drawn in full.
  present = ~np.isnan(coords)
  np.testing.assert_array_equal(coords[present], full_coords[present])
  np.testing.assert_array_equal(present[:, 0::2], present[:, 1::2])  # x and y go together.
  patterns, counts = np.unique(present, axis=0, return_counts=True)
  dominant = patterns[np.argmax(counts)]
  expected = [c.rsplit("_", 1)[0] in _FOUR_POINTS for c in keypoints.KAGGLE.columns]
  np.testing.assert_array_equal(dominant, expected)
  complete = present.all(axis=1).mean()
  assert 0.2 < complete < 0.45 and 0.55 < counts.max() / len(coords) < 0.8


def test_csv_round_trip(tmp_path):
  path = tmp_path / "faces.csv.gz"
  synthetic.write_csv(str(path), 5, seed=2, missing=True)
  images, coords = synthetic.generate(5, seed=2, missing=True)
  frame = pd.read_csv(path)
  assert list(frame.columns) == list(keypoints.KAGGLE.columns) + [keypoints.IMAGE_COLUMN]
  np.testing.assert_array_equal(frame[list(keypoints.KAGGLE.columns)].to_numpy(np.float32), coords)
  pixels = np.stack([np.array(s.split(), np.int64) for s in frame[keypoints.IMAGE_COLUMN]])
  np.testing.assert_array_equal(pixels.reshape(5, 96, 96), images)
  assert os.listdir(tmp_path) == ["faces.csv.gz"]  # No temporary file left behind.
  faces = kaggle.read_training_csv(str(path))  # The project's own reader accepts it.
  np.testing.assert_array_equal(faces.mask, ~np.isnan(coords))


def test_missing_labels_are_empty_cells(tmp_path):
  path = tmp_path / "faces.csv"
  synthetic.write_csv(str(path), 20, seed=0, missing=True)
  text = path.read_text()
  assert ",," in text and "nan" not in text.lower()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(pd.DataFrame, "to_csv", fail)
  with pytest.raises(OSError):
    synthetic.write_csv(str(tmp_path / "faces.csv"), 2)
  assert os.listdir(tmp_path) == []


def test_cli(tmp_path, capsys):
  path = tmp_path / "cli.csv"
  synthesize.main(["--out", str(path), "--n", "3", "--seed", "4", "--missing"])
  out = capsys.readouterr().out.strip()
  assert len(out.splitlines()) == 1 and str(path) in out and "3" in out
  assert len(pd.read_csv(path)) == 3

import numpy as np

from facekp_jax.core import geometry, keypoints


def test_columns_are_kaggles_thirty_in_order():
  assert len(keypoints.KAGGLE.columns) == 30
  assert keypoints.KAGGLE.columns[:4] == ("left_eye_center_x", "left_eye_center_y",
                                   "right_eye_center_x", "right_eye_center_y")
  assert keypoints.KAGGLE.columns[-2:] == ("mouth_center_bottom_lip_x", "mouth_center_bottom_lip_y")


def test_flip_permutation_pairs_left_with_right():
  names = keypoints.KAGGLE.names
  flip = np.asarray(keypoints.KAGGLE.flip)
  np.testing.assert_array_equal(flip[flip], np.arange(15))  # An involution.
  assert names[flip[names.index("left_eye_outer_corner")]] == "right_eye_outer_corner"
  assert names[flip[names.index("mouth_right_corner")]] == "mouth_left_corner"
  for centre in ("nose_tip", "mouth_center_top_lip", "mouth_center_bottom_lip"):
    assert flip[names.index(centre)] == names.index(centre)
  moved = [n for i, n in enumerate(names) if flip[i] != i]
  assert len(moved) == 12 and all("left" in n or "right" in n for n in moved)


def test_flip_coords_keep_x_and_y_slots():
  c = keypoints.KAGGLE.flip_coords
  assert sorted(c) == list(range(30))
  assert all(c[i] % 2 == i % 2 for i in range(30))
  assert keypoints.KAGGLE.columns[c[0]] == "right_eye_center_x"


def test_mirror_maps_pixel_centres():
  assert geometry.mirror(0) == 95 and geometry.mirror(95) == 0 and geometry.mirror(47.5) == 47.5

"""The 15 facial keypoints: names, Kaggle column order, and the mirror permutation.

This module is the single source of truth for keypoint layout. Everything else
(reader, augmentation, synthetic faces, reports) derives from it.

Conventions:
  * "left" is the *subject's* left, which appears on the image's right side
    (larger x), as in Kaggle's Facial Keypoints Detection data.
  * Coordinates are in pixels of a 96x96 image, x to the right, y down, with
    pixel ``(row=i, col=j)`` centred at ``(x=j, y=i)``. A horizontal mirror of
    the image therefore maps ``x -> 95 - x`` (``IMAGE_SIZE - 1 - x``; ``geometry.mirror``).
  * The 30 target columns interleave x and y: ``[k0_x, k0_y, k1_x, k1_y, ...]``.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 96

KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)  # 15
NUM_COORDS = 2 * NUM_KEYPOINTS  # 30

# Kaggle's 30 target columns, in file order.
COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in ("x", "y"))
IMAGE_COLUMN = "Image"
ID_COLUMN = "ImageId"


def _mirror_name(name: str) -> str:
  if name.startswith("left_"):
    return "right_" + name[len("left_"):]
  if name.startswith("right_"):
    return "left_" + name[len("right_"):]
  if name.startswith("mouth_left_"):
    return "mouth_right_" + name[len("mouth_left_"):]
  if name.startswith("mouth_right_"):
    return "mouth_left_" + name[len("mouth_right_"):]
  return name


# FLIP_KEYPOINTS[i] is the keypoint that keypoint i becomes in a mirrored face.
FLIP_KEYPOINTS: np.ndarray = np.array(
    [KEYPOINT_NAMES.index(_mirror_name(n)) for n in KEYPOINT_NAMES])
# The same permutation over the 30 interleaved coordinates.
FLIP_COORDS: np.ndarray = np.stack([2 * FLIP_KEYPOINTS, 2 * FLIP_KEYPOINTS + 1], axis=1).reshape(-1)

# Eye centres, for inter-ocular distance (NME).
LEFT_EYE = KEYPOINT_NAMES.index("left_eye_center")
RIGHT_EYE = KEYPOINT_NAMES.index("right_eye_center")


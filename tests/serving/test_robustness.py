"""Robustness perturbations move labels with the faces, and the scorer's ratios."""

import io
import sys

import numpy as np
import pytest

from facekp_jax.core.faces import Faces
from facekp_jax.serving import robustness


def _dots(points) -> Faces:
  """One face of 3x3 white dots, each labelled as the next keypoint."""
  images = np.zeros((1, 96, 96, 1), np.float32)
  targets, mask = np.zeros((1, 30), np.float32), np.zeros((1, 30), np.float32)
  for k, (x, y) in enumerate(points):
    images[0, y - 1:y + 2, x - 1:x + 2] = 1.0
    targets[0, 2 * k:2 * k + 2], mask[0, 2 * k:2 * k + 2] = (x, y), 1
  return Faces(images, targets, mask)


@pytest.mark.parametrize("name", list(robustness.PERTURBATIONS))
def test_every_perturbation_keeps_each_label_on_its_dot(name):
  points = [(30, 35), (66, 35), (48, 55), (36, 74), (60, 74)]  # Eyes, nose, mouth.
  for k, p in enumerate(points):  # One dot at a time: no overlap.
    moved = robustness.perturb(_dots([p]), name)
    if not moved.mask[0, 0]:
      continue  # Left the frame: masked, not scored.
    image = moved.images[0, ..., 0]
    w = np.where(image > 0.2, image, 0.0)
    ys, xs = np.mgrid[:96, :96]
    centre = ((w * xs).sum() / w.sum(), (w * ys).sum() / w.sum())
    np.testing.assert_allclose(centre, moved.targets[0, :2], atol=0.2, err_msg=f"point {k}")


def test_rotation_by_30_degrees_moves_a_corner_point_off_the_frame():
  moved = robustness.perturb(_dots([(2, 2)]), "rot+30")
  assert moved.mask.sum() == 0 and moved.targets.sum() == 0


def test_scorer_ratios_are_relative_to_the_unperturbed_faces():
  faces = _dots([(30, 35), (66, 35), (48, 55)])
  fixed = faces.targets + 1.0  # Predicts the unperturbed labels + 1 px, whatever the picture.
  results = robustness.score(lambda images: np.repeat(fixed, len(images), 0), faces)
  per = results["perturbations"]
  assert per["rot0"]["rmse"] == pytest.approx(1.0, abs=1e-5)
  # Shifted right by 6 px: x errors 1 - 6 = -5, y errors 1: RMSE sqrt((25 + 1) / 2).
  assert per["shift_x+6"]["rmse"] == pytest.approx(np.sqrt(13.0), abs=1e-3)
  assert per["shift_x+6"]["rmse_ratio"] == pytest.approx(np.sqrt(13.0), abs=1e-3)
  assert results["groups"]["rot+-20"] > 2.0
  assert set(results["groups"]) == set(robustness.GROUPS)


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_over_the_perturbations_shows_on_a_terminal_only(monkeypatch):
  faces = _dots([(30, 35)])
  still = lambda images: np.zeros((len(images), 30), np.float32)
  for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
    monkeypatch.setattr(sys, "stderr", stream)
    robustness.score(still, faces)
    text = stream.getvalue()
    assert ("robustness" in text and f"0/{len(robustness.PERTURBATIONS)}" in text) == shown, text

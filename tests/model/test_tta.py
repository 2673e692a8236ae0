"""model/tta.py: the views a test-time average is the mean of, and how well they agree."""

import numpy as np

from facekp_jax.core import keypoints
from facekp_jax.model import tta

FIVE = keypoints.get("mtfl5")  # Eye centres 0 and 1 (its normaliser), nose, mouth corners.
EYES_APART = 40.0


def _shape(n=3):
  """(n, 10) five points whose eyes are ``EYES_APART`` apart, mirror-symmetric about x=47.5."""
  one = np.array([[67.5, 40], [27.5, 40], [47.5, 55], [62.5, 70], [32.5, 70]], np.float32)
  return np.tile(one.reshape(1, -1), (n, 1))


def test_views_are_the_mirror_pairs_of_each_turn_and_their_mean_is_the_average():
  images = np.random.default_rng(0).random((3, 96, 96, 1)).astype(np.float32)
  calls = []

  def reader(x):  # A different answer for every call: the mean must be over all of them.
    calls.append(len(x))
    return _shape(len(x)) + len(calls)

  every = tta.views(reader, images, FIVE, rotations=(10.0,))
  assert len(every) == 6 and calls == [3] * 6
  calls.clear()
  np.testing.assert_allclose(tta.average(reader, images, FIVE, rotations=(10.0,)),
                             np.mean(every, axis=0), atol=1e-5)
  assert len(tta.views(reader, images, FIVE)) == 2


def test_views_that_agree_score_one_and_scattered_views_score_by_the_eye_distance():
  shape = _shape()
  assert np.allclose(tta.agreement([shape, shape, shape], FIVE), 1.0)
  # The nose of one view of two 4 px right of the other's: each 2 px (5 % of 40) from the mean.
  moved = shape.copy()
  moved[:, 4] += 4.0
  got = tta.agreement([shape, moved], FIVE)
  np.testing.assert_allclose(got[:, 2], np.exp(-2.0 / (tta.AGREEMENT_SCALE * EYES_APART)),
                             rtol=1e-6)
  np.testing.assert_allclose(np.delete(got, 2, axis=1), 1.0)
  # A face half the size scattering as much agrees less: the scatter is in eye distances.
  small = (shape - 47.5) * 0.5 + 47.5
  small_moved = small.copy()
  small_moved[:, 4] += 4.0
  assert (tta.agreement([small, small_moved], FIVE)[:, 2] < got[:, 2]).all()
  # No normaliser to read (an eye untrained, NaN): no score.
  blind = shape.copy()
  blind[:, 0:2] = np.nan
  assert np.isnan(tta.agreement([blind, blind], FIVE)).all()

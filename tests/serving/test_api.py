"""The Python API: the shipped model finds faces in photos of any form; packed models; refusals."""

import dataclasses
import os

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

import facekp_jax
from facekp_jax.core import keypoints
from facekp_jax.serving import detect, predictor

# skimage.data.astronaut() (512x512): the eye centres (pupils), read off the picture at 10x.
ASTRONAUT_EYES = {"right_eye_center": (202.5, 100.5), "left_eye_center": (246.5, 102.0)}


@pytest.fixture(scope="module")
def shipped():
  return facekp_jax.Predictor.load()


def test_the_shipped_model_is_mtfls_five_points_and_small():
  assert os.path.isfile(os.path.join(predictor.SHIPPED, predictor.PACKED_WEIGHTS))
  size = sum(os.path.getsize(os.path.join(predictor.SHIPPED, f))
             for f in os.listdir(predictor.SHIPPED))
  assert size < 5e6


def test_the_shipped_model_puts_the_astronauts_eyes_where_they_are(shipped):
  assert shipped.layout is keypoints.MTFL
  assert shipped.variables["params"]["heatmap"]["keypoint_maps"]["kernel"].shape[-1] == 5
  faces = shipped.find(skimage_data.astronaut())  # uint8 RGB, 512x512.
  assert len(faces) == 1
  face = faces[0]
  assert list(face.keypoints) == list(keypoints.MTFL.names)
  for name, (x, y) in ASTRONAUT_EYES.items():
    got = face.keypoints[name]
    assert np.hypot(got[0] - x, got[1] - y) < 5.0, (name, got)
  bx, by, bw, bh = face.box
  assert all(bx <= x <= bx + bw and by <= y <= by + bh for x, y in face.keypoints.values())
  assert face.array().shape == (5, 2)
  # A heatmap model says how sure it is of each keypoint: sure of these.
  assert list(face.confidence) == list(face.keypoints)
  assert all(0.8 < c <= 1.0 for c in face.confidence.values()), face.confidence


def test_confidences_are_high_on_a_face_and_low_on_noise(shipped):
  face = shipped.find(skimage_data.astronaut())[0]
  noise = np.random.default_rng(0).integers(0, 256, (4, 96, 96), dtype=np.uint8)
  grey = np.full((96, 96), 128, np.uint8)
  for nothing in (noise, grey):
    scores = shipped.confidences(nothing)
    assert scores.shape == (len(np.atleast_3d(nothing).reshape(-1, 96, 96)), 5)
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores.mean(axis=1).max() < 0.7 < min(face.confidence.values())
  partial = dataclasses.replace(shipped, trained=np.repeat([1.0, 1.0, 1.0, 1.0, 0.0], 2))
  assert np.isnan(partial.confidences(noise)[:, 4]).all()


def test_find_drops_what_the_model_does_not_read_as_a_face(shipped):
  """A face-free photo's cascade boxes are read and dropped by their face score; the same
  boxes come back with ``min_score=0``."""
  coins = cv2.resize(skimage_data.coins(), (640, 480), interpolation=cv2.INTER_AREA)
  every = shipped.find(coins, min_score=0.0)  # Haar finds a 'face' among these coins.
  assert every and all(f.face_score < detect.MIN_FACE_SCORE for f in every)
  assert shipped.find(coins) == []
  face = shipped.find(skimage_data.astronaut())[0]
  assert face.face_score == pytest.approx(np.mean(list(face.confidence.values())))
  assert face.face_score >= detect.MIN_FACE_SCORE


def test_find_takes_every_form_of_the_same_photo_alike(shipped, tmp_path):
  rgb = skimage_data.astronaut()
  want = shipped.find(rgb)[0].array()
  grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
  path = tmp_path / "astronaut.png"
  import matplotlib.image
  matplotlib.image.imsave(path, rgb)
  for photo in (rgba, rgb / 255.0, grey, grey[..., None], str(path), path):
    got = shipped.find(photo)
    assert len(got) == 1
    np.testing.assert_allclose(got[0].array(), want, atol=0.05)
  # A larger copy of the photo: the same points, in its own pixels.
  big = np.kron(rgb, np.ones((2, 2, 1), np.uint8))
  np.testing.assert_allclose(shipped.find(big)[0].array(), 2 * want + 0.5, atol=1.5)


@pytest.mark.parametrize("photo, problem", [
    (np.zeros((4, 5, 6, 3), np.uint8), "got shape (4, 5, 6, 3)"),
    (np.zeros((64, 64, 2), np.uint8), "got shape (64, 64, 2)"),
    (np.zeros((0, 64), np.uint8), "empty"),
    (np.full((64, 64), np.nan, np.float32), "non-finite"),
    (np.full((64, 64), 200.0), "divide 0..255 values by 255"),
    (np.zeros((64, 64), bool), "uint8, uint16 or float; got bool"),
])
def test_find_refuses_bad_arrays_naming_the_problem(tiny_model, photo, problem):
  with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
    tiny_model.find(photo)


@pytest.fixture(scope="module")
def tiny_model(tiny_workdir):
  return predictor.load(tiny_workdir)


def test_keypoints_reads_framed_faces_follows_the_runs_tta_and_hides_untrained(tiny_model):
  rng = np.random.default_rng(0)
  faces = rng.integers(0, 256, (3, 96, 96), dtype=np.uint8)
  got = tiny_model.keypoints(faces)
  assert got.shape == (3, 15, 2)
  x = faces[..., None].astype(np.float32) / 255.0
  np.testing.assert_allclose(got.reshape(3, -1), tiny_model.predict(x, tta=tiny_model.config.tta),
                             atol=1e-5)
  np.testing.assert_allclose(tiny_model.keypoints(faces / 255.0), got, atol=1e-4)
  np.testing.assert_allclose(tiny_model.keypoints(faces[0]), got[:1], atol=1e-4)
  with_tta = tiny_model.keypoints(faces, tta=True)
  np.testing.assert_allclose(with_tta.reshape(3, -1), tiny_model.predict(x, tta=True), atol=1e-5)
  trained = tiny_model.trained.copy()
  trained[:4] = 0  # The first two keypoints never labelled: NaN.
  partial = dataclasses.replace(tiny_model, trained=trained)
  out = partial.keypoints(faces)
  assert np.isnan(out[:, :2]).all() and np.isfinite(out[:, 2:]).all()
  for bad, problem in ((np.zeros((2, 64, 64)), "got shape"), (np.zeros((0, 96, 96)), "no faces")):
    for read in (tiny_model.keypoints, tiny_model.confidences):
      with pytest.raises(ValueError, match=problem):
        read(bad)
  # A regression model has no keypoint confidence, and says so.
  assert tiny_model.config.model.head == "regression" and tiny_model.confidences(faces) is None


def test_a_packed_model_predicts_as_its_workdir_did(tiny_model, tmp_path):
  out = str(tmp_path / "packed")
  predictor.pack(tiny_model, out, note={"what": "a test"})
  packed = facekp_jax.load(out)
  assert packed.checkpoint == "packed" and packed.step == tiny_model.step
  assert packed.layout is tiny_model.layout
  np.testing.assert_array_equal(packed.trained, tiny_model.trained)
  x = np.random.default_rng(1).random((4, 96, 96, 1), np.float32)
  # float16 weights: the same keypoints to well under a pixel.
  np.testing.assert_allclose(packed.predict(x), tiny_model.predict(x), atol=0.05)
  os.remove(os.path.join(out, predictor.PACKED_WEIGHTS))
  np.savez(os.path.join(out, predictor.PACKED_WEIGHTS), nothing=np.zeros(3))
  with pytest.raises(facekp_jax.serving.predictor.WorkdirError, match="does not fit"):
    facekp_jax.load(out)

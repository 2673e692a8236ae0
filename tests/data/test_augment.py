import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from facekp_jax.core import errors, geometry, keypoints
from facekp_jax.core.faces import Faces
from facekp_jax.data import augment
from facekp_jax.model import tta
from facekp_jax.training import config as config_lib

K = keypoints.KAGGLE
LEFT, RIGHT = K.index("left_eye_center"), K.index("right_eye_center")


def _faces(n=6, seed=0):
  rng = np.random.default_rng(seed)
  mask = (rng.random((n, 15)) < 0.7).repeat(2, axis=1).astype(np.float32)
  targets = np.where(mask > 0, rng.uniform(5, 90, (n, 30)), 0).astype(np.float32)
  return Faces(rng.random((n, 96, 96, 1), dtype=np.float32), targets, mask)


def _config(**kw):
  """Every knob of ``config.augment`` off (the photometric ones are by default), then ``kw``."""
  c = ml_collections.ConfigDict(config_lib.defaults().augment.to_dict())
  c.update(dict(hflip_prob=0.0, hflip_swap=True, vflip_prob=0.0, brightness_prob=0.0,
                brightness_range=(0.8, 1.25), geometry_prob=0.0, rotate_deg=0.0,
                scale_range=(1.0, 1.0), shift_px=0.0))
  c.update(kw)
  return c


def _dot_face(x: int, y: int, keypoint: int = 0) -> Faces:
  """One black face with a 3x3 white dot at (x, y), labelled as ``keypoint``."""
  images = np.zeros((1, 96, 96, 1), np.float32)
  images[0, y - 1:y + 2, x - 1:x + 2] = 1.0
  targets, mask = np.zeros((1, 30), np.float32), np.zeros((1, 30), np.float32)
  targets[0, 2 * keypoint:2 * keypoint + 2] = (x, y)
  mask[0, 2 * keypoint:2 * keypoint + 2] = 1
  return Faces(images, targets, mask)


def _brightest(image) -> tuple[float, float]:
  """Intensity-weighted centre (x, y) of an image's bright pixels."""
  w = np.where(image[..., 0] > 0.2, image[..., 0], 0.0)
  ys, xs = np.mgrid[:96, :96]
  return float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())


@pytest.mark.parametrize("angle,scale,shift,flip", [
    (30.0, 1.0, (0.0, 0.0), False), (-20.0, 0.8, (5.0, -7.0), False),
    (15.0, 1.2, (-6.0, 4.0), True), (0.0, 1.0, (9.0, 3.0), True)])
def test_a_drawn_dot_lands_on_its_label_after_the_warp(angle, scale, shift, flip):
  faces = _dot_face(70, 30, keypoint=LEFT)
  plan = augment.draw_plan(1, np.random.default_rng(0), _config())
  plan["hflip"] = np.array([flip])
  plan["geometry"] = np.array([True])
  plan["forward"], plan["inverse"] = geometry.affine_maps([angle], [scale], [shift])
  out = augment.apply_plan(faces, plan, _config(), K)
  eye = RIGHT if flip else LEFT  # The flip swaps the label.
  assert out.mask[0, 2 * eye] == 1 and out.mask.sum() == 2
  label = out.targets[0, 2 * eye:2 * eye + 2]
  np.testing.assert_allclose(_brightest(out.images[0]), label, atol=0.15)
  # And the label is where the map sends the (mirrored) point, by hand.
  x, y = (95 - 70 if flip else 70) - 47.5, 30 - 47.5
  t = np.deg2rad(angle)
  want = (scale * (np.cos(t) * x - np.sin(t) * y) + 47.5 + shift[0],
          scale * (np.sin(t) * x + np.cos(t) * y) + 47.5 + shift[1])
  np.testing.assert_allclose(label, want, atol=1e-3)


def test_a_label_pushed_out_of_the_frame_is_masked():
  faces = _dot_face(90, 50, keypoint=0)
  faces.targets[0, 2:4], faces.mask[0, 2:4] = (50, 50), 1  # A second point, near the centre.
  forward, inverse = geometry.affine_maps([0.0], [1.0], [(10.0, 0.0)])
  out = geometry.warp(faces, forward, inverse)
  np.testing.assert_array_equal(out.mask[0, :4], [0, 0, 1, 1])  # x = 100 left the frame.
  np.testing.assert_array_equal(out.targets[0, :2], [0, 0])
  np.testing.assert_allclose(out.targets[0, 2:4], [60, 50], atol=1e-4)
  # Edge fill: the strip uncovered on the left repeats the image's first column.
  np.testing.assert_array_equal(out.images[0, :, :10], np.repeat(faces.images[0, :, :1], 10, 1))


def test_identity_geometry_draws_leave_old_plans_unchanged():
  config = _config(hflip_prob=0.5, brightness_prob=0.5)
  plan = augment.draw_plan(64, np.random.default_rng(5), config)
  rng = np.random.default_rng(5)  # The draws of the version before geometry, by hand.
  assert (plan["hflip"] == (rng.random(64) < 0.5)).all()
  rng.random(64), rng.random(64)
  assert not plan["geometry"].any()
  np.testing.assert_array_equal(plan["forward"], np.tile(np.eye(2, 3, dtype=np.float32),
                                                         (64, 1, 1)))


def test_hflip_moves_a_dot_and_its_label_to_the_mirrored_pixel():
  faces = _faces(1)
  images = np.zeros_like(faces.images)
  images[0, 40, 20, 0] = 1.0  # Row 40, column 20: the point (x=20, y=40).
  targets = faces.targets.copy()
  targets[0, 0:2] = (20, 40)  # left_eye_center
  mask = np.ones_like(faces.mask)
  out = geometry.hflip(Faces(images, targets, mask), K)
  assert out.images[0, 40, 75, 0] == 1.0 and out.images.sum() == 1.0
  # The mirrored point is now the *right* eye (image left side after the flip).
  assert tuple(out.targets[0, 2:4]) == (75.0, 40.0)


def test_hflip_swaps_left_right_labels_and_masks():
  faces = _faces()
  out = geometry.hflip(faces, K)
  names = K.columns
  li, ri = names.index("left_eye_outer_corner_x"), names.index("right_eye_outer_corner_x")
  np.testing.assert_allclose(out.targets[:, ri] * out.mask[:, ri],
                             (95 - faces.targets[:, li]) * faces.mask[:, li])
  np.testing.assert_array_equal(out.mask[:, ri], faces.mask[:, li])
  np.testing.assert_array_equal(out.mask[:, li], faces.mask[:, ri])
  # Present coordinates stay present, absent ones stay absent and zero.
  assert out.mask.sum() == faces.mask.sum()
  assert np.all(out.targets[out.mask == 0] == 0)


def test_hflip_twice_is_identity():
  faces = _faces()
  twice = geometry.hflip(geometry.hflip(faces, K), K)
  np.testing.assert_array_equal(twice.images, faces.images)
  np.testing.assert_allclose(twice.targets, faces.targets, atol=1e-5)
  np.testing.assert_array_equal(twice.mask, faces.mask)


def test_hflip_without_swap_reproduces_the_seed_fault():
  faces = _faces()
  out = geometry.hflip(faces, K, swap_labels=False)
  np.testing.assert_array_equal(out.mask, faces.mask)
  np.testing.assert_allclose(out.targets[:, 0::2], np.where(faces.mask[:, 0::2] > 0,
                                                            95 - faces.targets[:, 0::2], 0))


def test_vflip_twice_is_identity_and_mirrors_y():
  faces = _faces()
  out = geometry.vflip(faces)
  np.testing.assert_array_equal(out.images, faces.images[:, ::-1])
  np.testing.assert_allclose(out.targets[:, 1::2], np.where(faces.mask[:, 1::2] > 0,
                                                            95 - faces.targets[:, 1::2], 0))
  np.testing.assert_array_equal(out.targets[:, 0::2], faces.targets[:, 0::2])
  np.testing.assert_allclose(geometry.vflip(out).targets, faces.targets, atol=1e-5)


def test_brightness_stays_in_range_and_clips():
  faces = _faces(200)
  out = augment.augment_batch(faces, np.random.default_rng(0),
                              _config(brightness_prob=1.0, brightness_range=(1.5, 2.0)), K)
  assert out.images.min() >= 0.0 and out.images.max() <= 1.0
  unclipped = (out.images < 1.0) & (faces.images > 0.01)
  ratio = out.images[unclipped] / faces.images[unclipped]
  assert ratio.min() >= 1.5 - 1e-4 and ratio.max() <= 2.0 + 1e-4
  per_image = [np.median(o[u] / f[u]) for o, f, u in zip(out.images, faces.images, unclipped)]
  assert np.ptp(per_image) > 0.3  # Factors differ between images and span the range.
  np.testing.assert_array_equal(out.targets, faces.targets)


def test_probability_zero_is_identity_and_one_flips_all():
  faces = _faces()
  same = augment.augment_batch(faces, np.random.default_rng(0), _config(), K)
  np.testing.assert_array_equal(same.images, faces.images)
  allh = augment.augment_batch(faces, np.random.default_rng(0), _config(hflip_prob=1.0), K)
  np.testing.assert_array_equal(allh.images, faces.images[:, :, ::-1])
  np.testing.assert_array_equal(allh.mask, geometry.hflip(faces, K).mask)


@pytest.mark.parametrize("knob", ["hflip_prob", "vflip_prob", "brightness_prob"])
def test_augment_batch_is_seeded_and_partial(knob):
  faces = _faces(64)
  cfg = _config(**{knob: 0.5})
  a = augment.augment_batch(faces, np.random.default_rng(7), cfg, K)
  b = augment.augment_batch(faces, np.random.default_rng(7), cfg, K)
  c = augment.augment_batch(faces, np.random.default_rng(8), cfg, K)
  np.testing.assert_array_equal(a.images, b.images)
  changed = np.any(a.images != faces.images, axis=(1, 2, 3))
  assert 10 < changed.sum() < 54  # About half the faces.
  assert np.any(a.images != c.images)


def test_augment_batch_does_not_modify_its_input():
  faces = _faces()
  before = [a.copy() for a in (faces.images, faces.targets, faces.mask)]
  augment.augment_batch(faces, np.random.default_rng(0),
                        _config(hflip_prob=1, vflip_prob=1, brightness_prob=1), K)
  for a, b in zip(before, (faces.images, faces.targets, faces.mask)):
    np.testing.assert_array_equal(a, b)


def test_seed_copies_are_four_times_the_set():
  faces = _faces(5)
  out = augment.seed_copies(faces, np.random.default_rng(0), _config(hflip_swap=False),
                            K)
  assert len(out) == 20
  np.testing.assert_array_equal(out.images[:5], faces.images)
  np.testing.assert_array_equal(out.images[5:10], faces.images[:, :, ::-1])
  np.testing.assert_array_equal(out.images[10:15], faces.images[:, ::-1, ::-1])


def test_turned_tta_views_are_turned_back_onto_the_face():
  """A 'model' that finds the dot reads every view right, so the test-time average of the
  turned views lands on the dot; a view turned back the wrong way would miss it by pixels."""
  faces = _dot_face(70, 30)

  def dot_reader(images):  # Every keypoint at the brightest spot (flip-symmetric by design).
    return np.array([_brightest(im) * K.num_keypoints for im in images], np.float32)

  flips_only = tta.average(dot_reader, faces.images, K)
  np.testing.assert_array_equal(flips_only, np.mean(tta.flip_views(dot_reader, faces.images,
                                                                   K), axis=0))
  turned = tta.average(dot_reader, faces.images, K,
                       rotations=(10.0, 25.0))
  np.testing.assert_allclose(turned.reshape(-1, 2), np.tile([70.0, 30.0], (15, 1)), atol=0.15)
  inverse = tta.rotation_views((25.0,))[1]  # +25 degrees: the dot moves far.
  view = geometry.fixed_warp(inverse)(faces.images)
  assert np.hypot(*np.subtract(_brightest(view[0]), (70.0, 30.0))) > 5
  # The constant-index warp is warp_images under the same map, also as JAX arrays.
  np.testing.assert_array_equal(view, geometry.warp_images(faces.images, inverse[None]))
  np.testing.assert_allclose(np.asarray(geometry.fixed_warp(inverse)(jnp.asarray(faces.images))),
                             view, atol=1e-6)
  assert tta.problems((10.0,)) == [] and tta.problems((0.0,))
  assert tta.problems(("x",))


# ----------------------------------------------------------------------------- issue 26's knobs

_PHOTOMETRIC = dict(contrast_prob=0.5, gamma_prob=0.5, blur_prob=0.5, noise_prob=0.5,
                    occlude_prob=0.5)


def test_photometric_draws_leave_the_older_knobs_draws_unchanged():
  old = _config(hflip_prob=0.5, brightness_prob=0.5, geometry_prob=0.7, rotate_deg=30.0,
                scale_range=(0.8, 1.2), shift_px=8.0)
  new = _config(**{**old.to_dict(), **_PHOTOMETRIC})
  a = augment.draw_plan(32, np.random.default_rng(9), old)
  b = augment.draw_plan(32, np.random.default_rng(9), new)
  for key in ("hflip", "vflip", "geometry", "forward", "inverse", "brightness"):
    np.testing.assert_array_equal(a[key], b[key])
  assert not a["noise"].any() and a["noise"].shape == (32, 1, 1, 1)  # No field drawn when off.
  assert b["noise"].shape == (32, 96, 96, 1) and b["blur"].any() and b["occlude"].any()


def test_a_face_that_draws_no_photometric_change_is_left_exactly_as_it_was():
  faces = _faces(16)
  config = _config(**_PHOTOMETRIC)
  plan = augment.draw_plan(16, np.random.default_rng(2), config)
  out = augment.apply_plan(faces, plan, config, K)
  untouched = ((plan["contrast"] == 1) & (plan["gamma"] == 1) & ~plan["blur"] & ~plan["occlude"]
               & ~plan["noise"].any(axis=(1, 2, 3)))
  assert untouched.any() and not untouched.all()
  np.testing.assert_array_equal(out.images[untouched], faces.images[untouched])
  assert not np.allclose(out.images[~untouched], faces.images[~untouched])
  np.testing.assert_array_equal(out.targets, faces.targets)  # Labels never move.
  np.testing.assert_array_equal(out.mask, faces.mask)
  assert out.images.min() >= 0 and out.images.max() <= 1


def test_contrast_scales_deviations_from_the_mean_and_gamma_bends_the_curve():
  images = np.linspace(0.2, 0.8, 96 * 96, dtype=np.float32).reshape(1, 96, 96, 1)
  lower = augment.contrast(images, np.array([0.5]))
  np.testing.assert_allclose(lower.std(), images.std() * 0.5, rtol=1e-4)
  np.testing.assert_allclose(lower.mean(), images.mean(), rtol=1e-5)
  np.testing.assert_allclose(augment.gamma(images, np.array([2.0])), images ** 2, rtol=1e-6)


def test_blur_keeps_flat_images_and_spreads_a_dot():
  flat = np.full((2, 96, 96, 1), 0.3, np.float32)
  taps = augment.blur_kernels(np.array([0.0, 1.5]))
  np.testing.assert_allclose(taps.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(taps[0], np.eye(1, 7, 3)[0])  # Sigma 0: the identity.
  np.testing.assert_allclose(augment.blur(flat, taps), flat, rtol=1e-6)
  dot = _dot_face(40, 50).images.repeat(2, axis=0)
  out = augment.blur(dot, taps)
  np.testing.assert_array_equal(out[0], dot[0])
  assert out[1].max() < dot[1].max() and out[1, 50, 43, 0] > 0  # Spread past the dot's edge.
  np.testing.assert_allclose(out[1].sum(), dot[1].sum(), rtol=1e-4)  # Away from the edges.
  np.testing.assert_allclose(_brightest(out[1]), (40, 50), atol=0.05)


def test_occlusion_paints_its_box_only():
  images = np.zeros((1, 96, 96, 1), np.float32)
  out = augment.occlude(images, np.array([[10.0, 20.0, 30.0, 25.0]]), np.array([0.7]))
  inside = np.zeros((96, 96), bool)
  inside[20:25, 10:30] = True
  np.testing.assert_array_equal(out[0, ..., 0], np.where(inside, np.float32(0.7), 0.0))


def test_squeeze_pulls_the_upright_face_towards_its_vertical_centre_line():
  forward, _ = geometry.affine_maps([0.0], [1.0], [(0.0, 0.0)], squeeze=[0.8])
  np.testing.assert_allclose(geometry.map_coords(forward[0], np.array([[67.5, 30.0]])),
                             [[47.5 + 0.8 * 20, 30.0]], atol=1e-3)
  # Before the turn: the squeezed axis is the face's own, turned with it.
  forward, _ = geometry.affine_maps([90.0], [1.0], [(0.0, 0.0)], squeeze=[0.5])
  np.testing.assert_allclose(geometry.map_coords(forward[0], np.array([[67.5, 47.5]])),
                             [[47.5, 47.5 + 10.0]], atol=1e-3)


def test_a_squeezed_dot_lands_on_its_label():
  faces = _dot_face(70, 30, keypoint=LEFT)
  config = _config(geometry_prob=1.0, squeeze_range=(0.7, 0.7))
  plan = augment.draw_plan(1, np.random.default_rng(0), config)
  out = augment.apply_plan(faces, plan, config, K)
  label = out.targets[0, 2 * LEFT:2 * LEFT + 2]
  np.testing.assert_allclose(label, (47.5 + 0.7 * 22.5, 30), atol=1e-3)
  np.testing.assert_allclose(_brightest(out.images[0]), label, atol=0.2)


def test_the_occlusion_size_must_fit_the_frame():
  config = config_lib.defaults()
  config.augment.occlude_size = (0.5, 1.2)
  with pytest.raises(errors.ConfigError, match="augment.occlude_size"):
    config_lib.check_config(config, 1)

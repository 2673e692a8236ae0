"""Input on the devices: the same batches as the host pipeline, the same training run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from facekp_jax.core import faces as faces_lib
from facekp_jax.core import keypoints
from facekp_jax.data import augment, on_device
from facekp_jax.training import loop
from tests.conftest import random_faces

K = keypoints.KAGGLE


def _faces(n, seed=0, missing_every=3):
  images, coords = random_faces(n, seed, missing_every=missing_every)
  return faces_lib.from_arrays(images, coords)


def _config(**augment_overrides):
  config = tiny.get_config()
  config.augment.hflip_prob = 0.5
  config.augment.vflip_prob = 0.5
  config.augment.brightness_prob = 0.5
  config.augment.brightness_range = (0.6, 1.6)  # Some pixels clip at 1.
  config.augment.update(augment_overrides)
  return config


@pytest.mark.parametrize("swap", [True, False])
def test_device_augmentation_equals_numpy_bit_for_bit(swap):
  config = _config(hflip_swap=swap)
  faces = _faces(16)
  plan = augment.draw_plan(16, np.random.default_rng(3), config.augment)
  assert plan["hflip"].any() and plan["vflip"].any() and (plan["brightness"] != 1).any()
  want = augment.apply_plan(faces, plan, config.augment, K)
  got = jax.jit(lambda b, p: augment.apply_plan(b, p, config.augment, K, xp=jnp))(faces, plan)
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.targets, want.targets)
  np.testing.assert_array_equal(got.mask, want.mask)


def test_device_warp_equals_numpy_with_flips_and_brightness():
  config = _config(geometry_prob=0.7, rotate_deg=30.0, scale_range=(0.8, 1.2), shift_px=8.0)
  fn = jax.jit(lambda b, p: augment.apply_plan(b, p, config.augment, K, xp=jnp))
  for seed in range(3):
    faces = _faces(16, seed)
    plan = augment.draw_plan(16, np.random.default_rng(seed), config.augment)
    assert plan["geometry"].any() and not plan["geometry"].all()
    want = augment.apply_plan(faces, plan, config.augment, K)
    got = fn(faces, plan)
    np.testing.assert_allclose(got.images, want.images, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.targets, want.targets, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got.mask, want.mask)


def test_device_photometric_changes_equal_numpy():
  config = _config(contrast_prob=0.5, gamma_prob=0.5, blur_prob=0.5, noise_prob=0.5,
                   occlude_prob=0.5, geometry_prob=0.5, rotate_deg=20.0,
                   squeeze_range=(0.7, 1.0))
  fn = jax.jit(lambda b, p: augment.apply_plan(b, p, config.augment, K, xp=jnp))
  faces = _faces(16, 4)
  plan = augment.draw_plan(16, np.random.default_rng(4), config.augment)
  want = augment.apply_plan(faces, plan, config.augment, K)
  got = fn(faces, plan)
  np.testing.assert_allclose(got.images, want.images, rtol=0, atol=1e-5)
  np.testing.assert_allclose(got.targets, want.targets, rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(got.mask, want.mask)


def test_epoch_plans_rebuild_the_host_batches():
  config = _config()
  config.batch_size = 8
  faces = _faces(36)  # 4 full batches, 4 faces dropped as in the host pipeline.
  host = list(loop.epoch_batches(faces, config, epoch=2, start=1))
  plans = list(augment.epoch_plans(len(faces), config, epoch=2, start=1))
  assert len(host) == len(plans) == 3
  for batch, (indices, plan) in zip(host, plans):
    rebuilt = augment.apply_plan(faces.take(indices), plan, config.augment,
                                 K)
    np.testing.assert_array_equal(rebuilt.images, batch.images)
    np.testing.assert_array_equal(rebuilt.targets, batch.targets)


def test_on_device_training_with_several_steps_per_call_matches_host_input(tmp_path, monkeypatch):
  uploads = []
  upload = on_device.upload
  monkeypatch.setattr(on_device, "upload", lambda *a: uploads.append(1) or upload(*a))

  def run(name, **overrides):
    config = _config()
    config.num_epochs, config.batch_size = 2, 8
    config.data.synthetic_n = 60  # 48 training faces: 6 steps per epoch.
    config.checkpoint_every_steps = 4  # Chunks must stop at step 4 and 8 as well.
    config.update(overrides)
    results = loop.train_and_evaluate(config, str(tmp_path / name))
    return results, tmp_path / name

  host, host_dir = run("host")
  assert not uploads
  dev, dev_dir = run("device", input_on_device=True, steps_per_call=5)
  assert uploads  # The device path ran.
  assert dev["steps"] == host["steps"] == 12
  assert dev["val_rmse"] == pytest.approx(host["val_rmse"], rel=1e-4)
  steps = lambda d: sorted(p.name for p in (d / "checkpoints").iterdir() if p.name.isdigit())
  assert steps(dev_dir) == steps(host_dir)
  metrics = lambda d: (d / "metrics.jsonl").read_text().splitlines()
  for a, b in zip(metrics(host_dir), metrics(dev_dir)):
    a, b = json.loads(a), json.loads(b)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)

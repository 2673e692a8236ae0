"""The pure steps and Trainer: masked loss arithmetic, learning, no retrace, predict's batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from facekp_jax.core import faces as faces_lib
from facekp_jax.core import sharding
from facekp_jax.model import losses, resnet
from facekp_jax.training import state as state_lib
from facekp_jax.training import steps
from tests.conftest import random_faces


def _config():
  return tiny.get_config()


def _batch(n=8, seed=0):
  images, coords = random_faces(n, seed)
  faces = faces_lib.from_arrays(images, coords)
  return {"images": faces.images, "targets": faces.targets, "mask": faces.mask}


def test_masked_mse_arithmetic():
  p = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  t = jnp.array([[1.0, 0.0, 0.0], [0.0, 5.0, 9.0]])
  m = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  sse, count = losses.masked_sse(p, t, m)
  assert float(sse) == 4.0 + 9.0 and float(count) == 3.0
  assert float(losses.masked_mse(p, t, m)) == pytest.approx(13.0 / 3.0)
  assert float(losses.masked_mse(p, t, jnp.zeros_like(m))) == 0.0


def test_train_step_learns_a_fixed_batch_without_retracing():
  mesh = sharding.make_mesh()
  trainer = steps.Trainer(_config(), mesh)
  state = trainer.init_state()
  batch = sharding.to_global(_batch(), mesh)
  losses = []
  for i in range(15):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["sse"] / metrics["count"]))
    if i == 0:  # The jit cache is shared by every Trainer in this process: count from here.
      compiled = trainer.train_step._cache_size()  # pylint: disable=protected-access
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 15
  assert trainer.train_step._cache_size() == compiled  # pylint: disable=protected-access


def test_masked_coordinates_get_no_gradient():
  """Targets under a zero mask can be anything: the step is identical."""
  mesh = sharding.make_mesh()
  trainer = steps.Trainer(_config(), mesh)
  batch = _batch()
  batch["mask"][:, 4:] = 0
  other = dict(batch, targets=np.where(batch["mask"] > 0, batch["targets"], 1e4))
  params = []
  for b in (batch, other):
    state, _ = trainer.train_step(trainer.init_state(), sharding.to_global(b, mesh))
    params.append(jax.device_get(state.params))
  jax.tree.map(np.testing.assert_array_equal, *params)


def test_predict_pads_a_call_to_the_next_power_of_two_with_the_same_predictions():
  """One face costs a batch of one, not eval_batch_size; the predictions stay the same."""
  mesh = sharding.make_mesh()
  trainer = steps.Trainer(_config(), mesh)  # eval_batch_size 16.
  state = trainer.init_state()
  images = np.random.default_rng(0).random((20, 96, 96, 1), dtype=np.float32)
  jitted, seen = trainer.inference.jitted, []
  variables = state_lib.inference_variables(state)

  def spy(variables, batch):
    seen.append(batch.shape[0])
    return jitted(variables, batch)

  trainer.inference.jitted = spy
  n_dev = mesh.devices.size
  for n, batches in ((1, [1]), (3, [4]), (20, [16, 16])):
    seen.clear()
    out = trainer.predict(state, images[:n])
    assert seen == [-(-b // n_dev) * n_dev for b in batches], (n, seen)
    # As in one full evaluation batch (the padding before): the same numbers.
    full = np.zeros((16, 96, 96, 1), np.float32)
    full[:min(n, 16)] = images[:min(n, 16)]
    expected = np.asarray(jitted(variables, sharding.to_global(full, mesh)))[:min(n, 16)]
    np.testing.assert_allclose(out[:16], expected, rtol=1e-6, atol=1e-5)


def test_the_map_loss_pulls_the_maps_toward_gaussians_at_the_labels():
  """With ``heatmap_loss`` the step descends the maps' divergence from a Gaussian at each
  label: weighted far above the coordinate loss, three steps lower it; unweighted, the step is
  the coordinate loss's alone (the maps' tree is not even collected)."""
  mesh = sharding.make_mesh()
  batch = _batch()
  batch["mask"][:2, :6] = 0  # Missing labels stay out of both losses.
  config = _config()
  config.model.head, config.model.heatmap_stages = "heatmap", 2

  @jax.jit
  def maps(params, batch_stats):
    _, sown = resnet.create_model(config).apply(
        {"params": params, "batch_stats": batch_stats}, batch["images"], train=True,
        mutable=["intermediates", "batch_stats"])
    return sown["intermediates"]["heatmap"]["logits"][0]

  def divergence(state):
    total, count = losses.map_kl(maps(state.params, state.batch_stats), batch["targets"],
                                 batch["mask"], sigma=config.heatmap_loss_sigma)
    return float(total / count)

  after = {}
  for weight in (0.0, 1e4):
    config.heatmap_loss = weight
    trainer = steps.Trainer(config, mesh)
    start = trainer.init_state()
    before = divergence(start)
    state = start
    for _ in range(3):
      state, metrics = trainer.train_step(state, sharding.to_global(batch, mesh))
    after[weight] = divergence(state)
    assert np.isfinite(float(metrics["sse"]))
  assert after[1e4] < before - 0.05 and after[1e4] < after[0.0] - 0.05, (before, after)

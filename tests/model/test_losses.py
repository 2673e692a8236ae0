"""The training losses against hand-computed values, and the parameter EMA's arithmetic."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from facekp_jax.core import sharding
from facekp_jax.model import losses
from facekp_jax.training import checkpoint, steps
from facekp_jax.training import state as state_lib


def _config(loss, **kw):
  return ml_collections.ConfigDict(dict(loss=loss, smooth_l1_beta=1.0, wing_w=10.0,
                                        wing_epsilon=2.0, **kw))


ERRORS = np.array([[0.5, -3.0, 12.0, 40.0]], np.float32)  # prediction - target, in px.
MASK = np.array([[1, 1, 1, 0]], np.float32)  # The 40 px error is a missing coordinate.


@pytest.mark.parametrize("name,per_error", [
    ("mse", lambda a: a * a),
    ("l1", lambda a: a),
    ("smooth_l1", lambda a: 0.5 * a * a if a < 1.0 else a - 0.5),
    ("wing", lambda a: 10 * np.log(1 + a / 2) if a < 10 else a - (10 - 10 * np.log(1 + 10 / 2))),
])
def test_masked_losses_equal_hand_computed_sums(name, per_error):
  targets = np.full((1, 4), 50.0, np.float32)
  total, count = losses.masked_sum(_config(name))(targets + ERRORS, targets, MASK)
  assert float(count) == 3
  want = sum(per_error(abs(float(e))) for e in ERRORS[0, :3])
  assert float(total) == pytest.approx(want, rel=1e-5)


def test_wing_is_continuous_at_w_and_steeper_than_l1_for_small_errors():
  wing = losses.masked_sum(_config("wing"))
  one = lambda e: wing(jnp.reshape(e, (1, 1)), jnp.zeros((1, 1)), jnp.ones((1, 1)))[0]
  assert float(one(10.0 - 1e-3)) == pytest.approx(float(one(10.0 + 1e-3)), abs=1e-2)
  slope = float(jax.grad(one)(0.5))
  assert slope == pytest.approx(10 / (2 + 0.5), rel=1e-4) and slope > 1.0  # w / (eps + |x|).


def test_a_masked_coordinate_gets_no_gradient_from_any_loss():
  for name in losses.LOSSES:
    fn = losses.masked_sum(_config(name))
    grad = jax.grad(lambda p, fn=fn: fn(p, jnp.zeros((1, 4)), jnp.asarray(MASK))[0])(
        jnp.asarray(ERRORS))
    assert float(grad[0, 3]) == 0.0 and np.all(np.isfinite(np.asarray(grad)))


def test_ema_arithmetic_and_warm_up():
  assert float(state_lib.ema_decay_at(0.999, 0)) == pytest.approx(0.1)  # (1 + 0) / (10 + 0).
  assert float(state_lib.ema_decay_at(0.999, 10**6)) == pytest.approx(0.999)
  ema = state_lib.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}, 0.75)
  np.testing.assert_allclose(ema["w"], [1.5, 3.0])  # 0.75 * ema + 0.25 * params.


def test_ema_lives_in_the_state_follows_the_steps_and_round_trips(tmp_path):
  config = tiny.get_config()
  config.ema_decay = 0.5
  mesh = sharding.make_mesh()
  trainer = steps.Trainer(config, mesh)
  state = trainer.init_state()
  p0 = jax.device_get(state.params)
  rng = np.random.default_rng(0)
  batch = {"images": rng.random((8, 96, 96, 1), dtype=np.float32),
           "targets": rng.uniform(20, 70, (8, 30)).astype(np.float32),
           "mask": np.ones((8, 30), np.float32)}
  state, _ = trainer.train_step(state, sharding.to_global(batch, mesh))
  # Step 1: decay min(0.5, 2 / 11) = 2/11, so ema = 2/11 * p0 + 9/11 * p1.
  d = 2 / 11
  want = jax.tree.map(lambda a, b: d * a + (1 - d) * b, p0, jax.device_get(state.params))
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(jax.device_get(state.ema_params))):
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)
  images = batch["images"]
  np.testing.assert_array_equal(  # Inference uses the average, not the raw weights.
      trainer.predict(state, images),
      trainer.predict(state.replace(params=state.ema_params, ema_params=None), images))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(state, {"history": []})
  ckpt.wait()
  restored, _ = ckpt.restore(trainer.init_state())
  ckpt.close()
  for x, y in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(restored.ema_params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_map_divergence_is_zero_at_the_labels_gaussian_and_grows_away_from_it():
  from facekp_jax.model import heads
  targets = jnp.array([[30.0, 40.0, 61.3, 52.7, 10.0, 80.0]])  # Three keypoints.
  mask = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])  # The third is missing.
  at = lambda t: losses.gaussian_log_maps(t, 48, 0.0, 2.0)
  np.testing.assert_allclose(heads.soft_argmax(at(targets))[0, :4], targets[0, :4], atol=1e-3)
  kl = lambda t: losses.map_kl(at(t), targets, mask, sigma=2.0)
  total, count = kl(targets)
  assert float(count) == 2 and float(total) == pytest.approx(0.0, abs=1e-5)
  near, far = (float(kl(targets + jnp.array([[d, 0, 0, 0, 0, 0]]))[0]) for d in (2.0, 8.0))
  assert 0 < near < far
  # Between Gaussians of one sigma: d^2 / (2 sigma^2) nats, away from the frame's edge.
  assert near == pytest.approx(4 / 8, rel=1e-3) and far == pytest.approx(64 / 8, rel=1e-3)
  # The missing keypoint's label and map change nothing.
  moved = targets.at[0, 4].set(1e4)
  assert float(losses.map_kl(at(targets + 3.0), moved, mask, sigma=2.0)[0]) == pytest.approx(
      float(losses.map_kl(at(targets + 3.0), targets, mask, sigma=2.0)[0]), abs=1e-6)
  assert losses.map_sum(_config("mse", heatmap_loss=0.0, model=dict(head="heatmap"))) is None
  # The regression head has no maps: the weight is the heatmap head's only.
  assert losses.map_sum(_config("mse", heatmap_loss=3.0, model=dict(head="regression"))) is None
  weighted = losses.map_sum(_config("mse", heatmap_loss=3.0, heatmap_loss_sigma=2.0,
                                    model=dict(heatmap_margin=0.0, head="heatmap")))
  assert float(weighted(at(targets + 2.0), targets, mask)[0]) == pytest.approx(
      3 * float(kl(targets + 2.0)[0]), rel=1e-5)

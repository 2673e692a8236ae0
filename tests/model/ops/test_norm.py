"""norm.BatchNorm is nn.BatchNorm: variables, outputs, gradients, running statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facekp_jax.model.ops import norm


def _pair(train):
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-3)
  return nn.BatchNorm(**kw), norm.BatchNorm(**kw)


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (6, 7)])
def test_training_outputs_gradients_and_running_stats_match(shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape) * 3 + 2, jnp.float32)
  w = jnp.asarray(rng.normal(size=shape), jnp.float32)
  ref, new = _pair(train=True)
  variables = ref.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, new.init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, variables)
  params = {"scale": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)}
  stats = {"mean": jnp.full(shape[-1], 0.3), "var": jnp.full(shape[-1], 2.0)}

  def loss(module, params, x):
    y, updates = module.apply({"params": params, "batch_stats": stats}, x,
                              mutable=["batch_stats"])
    return jnp.sum(nn.relu(y) * w), (y, updates["batch_stats"])

  (l_ref, (y_ref, s_ref)), g_ref = jax.value_and_grad(
      lambda p, x: loss(ref, p, x), argnums=(0, 1), has_aux=True)(params, x)
  (l_new, (y_new, s_new)), g_new = jax.value_and_grad(
      lambda p, x: loss(new, p, x), argnums=(0, 1), has_aux=True)(params, x)
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves((s_new, g_new)), jax.tree.leaves((s_ref, g_ref))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_through_the_statistics_is_exact():
  # Not used by training (running averages are not differentiated), but must not be wrong.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)
  one, zero = jnp.ones(3), jnp.zeros(3)
  f = lambda x: jnp.sum(norm.batch_norm_train(x, one, zero, 1e-3)[1] ** 2
                        + norm.batch_norm_train(x, one, zero, 1e-3)[2])
  g = lambda x: jnp.sum(jnp.mean(x, 0) ** 2 + jnp.var(x, 0))
  np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), rtol=1e-5, atol=1e-6)


def test_inference_uses_running_statistics():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 3, 4)), jnp.float32)
  ref, new = _pair(train=False)
  variables = {"params": {"scale": jnp.full(4, 2.0), "bias": jnp.full(4, 0.5)},
               "batch_stats": {"mean": jnp.full(4, 0.1), "var": jnp.full(4, 3.0)}}
  np.testing.assert_allclose(new.apply(variables, x), ref.apply(variables, x), rtol=1e-6)

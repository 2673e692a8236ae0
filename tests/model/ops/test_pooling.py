"""The fast max-pool is nn.max_pool: values and gradients, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facekp_jax.model.ops import pooling


@pytest.mark.parametrize("shape,window,strides", [
    ((2, 9, 9, 3), (3, 3), (2, 2)),
    ((2, 10, 7, 3), (3, 3), (2, 2)),
    ((2, 11, 11, 4), (2, 2), (2, 2)),
    ((1, 6, 6, 2), (2, 2), (2, 2)),
])
@pytest.mark.parametrize("ties", [False, True])
def test_values_and_gradients_equal_nn_max_pool(shape, window, strides, ties):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  if ties:  # Few distinct values: most windows hold their maximum more than once.
    x = np.round(x).clip(-1, 1)
  x = jnp.asarray(x)
  weights = jnp.asarray(rng.normal(size=nn.max_pool(x, window, strides).shape), jnp.float32)
  ref = lambda x: jnp.sum(nn.max_pool(x, window, strides) * weights)
  new = lambda x: jnp.sum(pooling.max_pool(x, window, strides) * weights)
  np.testing.assert_array_equal(pooling.max_pool(x, window, strides),
                                nn.max_pool(x, window, strides))
  g_ref, g_new = jax.grad(ref)(x), jax.grad(new)(x)
  np.testing.assert_allclose(g_new, g_ref, rtol=0, atol=1e-6)
  if ties:  # Each output routes its whole gradient to exactly one input.
    assert np.count_nonzero(np.asarray(g_new)) <= weights.size


def test_window_larger_than_input_is_an_error():
  with pytest.raises(ValueError, match="smaller than the 3x3 window"):
    pooling.max_pool(jnp.zeros((1, 2, 5, 1)), (3, 3), (2, 2))

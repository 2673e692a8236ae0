"""conv.Conv is nn.Conv with 'VALID' padding: parameters, outputs, gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facekp_jax.model.ops import conv


@pytest.mark.parametrize("shape,window,strides", [
    ((2, 20, 20, 1), (7, 7), (2, 2)),
    ((2, 9, 8, 3), (3, 3), (1, 1)),
    ((1, 11, 11, 2), (3, 2), (2, 3)),
])
def test_outputs_and_gradients_equal_nn_conv(shape, window, strides):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  ref = nn.Conv(4, window, strides=strides, padding="VALID")
  new = conv.Conv(4, window, strides=strides)
  variables = ref.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, new.init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, variables)
  w = jnp.asarray(rng.normal(size=ref.apply(variables, x).shape), jnp.float32)
  loss = lambda m: (lambda v, x: jnp.sum(m.apply(v, x) * w))
  np.testing.assert_allclose(new.apply(variables, x), ref.apply(variables, x), rtol=1e-5,
                             atol=1e-5)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(variables, x)
  g_new = jax.grad(loss(new), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_patches_are_the_windows_in_kernel_order():
  x = jnp.arange(2 * 5 * 5 * 2, dtype=jnp.float32).reshape(2, 5, 5, 2)
  p = conv.patches(x, (3, 3), (2, 2))
  assert p.shape == (2 * 2 * 2, 3 * 3 * 2)
  # Row 3 = image 0, output (1, 1): the window x[0, 2:5, 2:5, :] flattened as (i, j, c).
  np.testing.assert_array_equal(p[3], x[0, 2:5, 2:5, :].reshape(-1))

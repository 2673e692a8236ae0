"""The fast layers and Flax's reference ones compute the same function."""

import jax.numpy as jnp
import numpy as np

from facekp_jax.model.ops import layers


def test_reshape_pool_matches_flax_pool_on_odd_sizes():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 23, 23, 3)).astype(np.float32))
  fast, reference = (layers.make(f, use_bias=False, dtype=jnp.float32, kernel_init=None).max_pool
                     for f in (True, False))
  np.testing.assert_array_equal(fast(x, (2, 2), (2, 2)), reference(x, (2, 2), (2, 2)))

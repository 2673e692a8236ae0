"""experiments/stem_variants.py: the space-to-depth convolution is the strided one."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import stem_variants
from facekp_jax.model.ops import conv


@pytest.mark.parametrize("shape,window,strides", [
    ((2, 102, 102, 1), (7, 7), (2, 2)),  # The stem.
    ((2, 20, 19, 3), (3, 5), (2, 3)),
    ((1, 9, 9, 1), (2, 2), (2, 2)),
])
def test_space_to_depth_is_the_same_convolution(shape, window, strides):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(*window, shape[-1], 5)), jnp.float32)
  np.testing.assert_allclose(stem_variants.space_to_depth_conv(x, kernel, strides),
                             conv._conv(x, kernel, strides), rtol=1e-5, atol=1e-4)

"""A 'VALID' convolution whose kernel gradient is one matrix product (im2col).

XLA:CPU computes the kernel gradient of the stem's 7x7/2 convolution on a single
input channel as a convolution over the batch (~15 ms per step of 32 images on
2 cores, more than the forward pass). Written as patches^T @ output-gradient,
with the patches gathered by strided slices of the input, it is one well-shaped
matrix product. The forward pass and the input gradient stay XLA's convolution.
Same parameters (``nn.Conv``'s ``kernel``/``bias``) and the same function.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from facekp_jax.model.ops import pooling

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, strides):
  return lax.conv_general_dilated(x, kernel, strides, "VALID", dimension_numbers=_DIMENSIONS)


def patches(x, window, strides):
  """(N * Ho * Wo, kh * kw * C) rows of 'VALID' windows, columns in HWIO kernel order."""
  cols = pooling.window_slices(x, window, strides)
  (kh, kw), c = window, x.shape[-1]
  return jnp.concatenate(cols, axis=-1).reshape(-1, kh * kw * c)


def _forward(x, kernel, strides):
  return _conv(x, kernel, strides), (x, kernel)


def _backward(strides, residuals, g):
  x, kernel = residuals
  kh, kw, _, features = kernel.shape
  g_kernel = patches(x, (kh, kw), strides).T @ g.reshape(-1, features)
  g_x = jax.vjp(lambda x: _conv(x, kernel, strides), x)[1](g)[0]
  return g_x, g_kernel.reshape(kernel.shape).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_valid(x, kernel, strides):
  """'VALID' NHWC x HWIO convolution; kernel gradient by im2col."""
  return _conv(x, kernel, strides)


conv_valid.defvjp(_forward, _backward)


class Conv(nn.Module):
  """``nn.Conv(features, kernel_size, strides, padding='VALID')`` with an im2col kernel gradient."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    y = conv_valid(jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype), tuple(self.strides))
    if self.use_bias:
      y = y + jnp.asarray(self.param("bias", nn.initializers.zeros_init(), (self.features,),
                                     jnp.float32), self.dtype)
    return y

"""The network's building layers, fast (for XLA:CPU) or Flax's reference ones, from one factory.

``make(fast=True)`` gives 1x1 convolutions as one 2-D matrix product, the stem's 'VALID'
convolution with an im2col kernel gradient (``conv``), batch norm with a closed-form gradient
(``norm``) and max-pools that route their gradient by a stored argmax (``pooling``);
``make(fast=False)`` gives ``nn.Conv``, ``nn.BatchNorm`` and ``nn.max_pool``. Both have the same
parameters (names, shapes, initialisers) and compute the same function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from facekp_jax.model.ops import conv as conv_lib
from facekp_jax.model.ops import norm as norm_lib
from facekp_jax.model.ops import pooling


def _matmul_2d(x, kernel_2d):
  """(..., K) @ (K, F) as one 2-D matrix product.

  XLA's CPU backend runs the weight gradient of a dot that contracts several
  leading axes (batch, height, width) several times slower than the same
  product written over a single flattened axis.
  """
  y = jnp.reshape(x, (-1, x.shape[-1])) @ kernel_2d
  return jnp.reshape(y, x.shape[:-1] + (kernel_2d.shape[-1],))


class PointwiseConv(nn.Module):
  """A 1x1 convolution computed as one 2-D matrix product over channels.

  Same parameters (names, shapes, initialisers) and the same function as
  ``nn.Conv(features, (1, 1))``, but faster to differentiate on CPU.
  """

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        (1, 1, x.shape[-1], self.features), jnp.float32)
    y = _matmul_2d(jnp.asarray(x, self.dtype), jnp.asarray(kernel[0, 0], self.dtype))
    if self.use_bias:
      y = y + jnp.asarray(self.param("bias", nn.initializers.zeros_init(), (self.features,),
                                     jnp.float32), self.dtype)
    return y


def _reference_max_pool(x, window, strides):
  return nn.max_pool(x, window_shape=window, strides=strides)


class Layers(NamedTuple):
  """Layer constructors with the dtype, bias and initialiser of one network.

  Attributes:
    conv: ``conv(features, kernel_size, padding=..., name=...)``, an ``nn.Conv``.
    pointwise: ``pointwise(features, name=...)``, a 1x1 convolution.
    valid_conv: ``valid_conv(features, kernel_size, strides, name=...)``, 'VALID' padding.
    batch_norm: the batch norm class (``nn.BatchNorm``'s fields and variables).
    max_pool: ``max_pool(x, window, strides)``, 'VALID' padding.
  """

  conv: Callable[..., nn.Module]
  pointwise: Callable[..., nn.Module]
  valid_conv: Callable[..., nn.Module]
  batch_norm: Callable[..., nn.Module]
  max_pool: Callable[..., Any]


def make(fast: bool, *, use_bias: bool, dtype: Any, kernel_init: Any) -> Layers:
  """The fast layers (``fast=True``) or Flax's reference ones: same parameters and function."""
  conv = functools.partial(nn.Conv, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init)
  if fast:
    return Layers(
        conv=conv,
        pointwise=functools.partial(PointwiseConv, use_bias=use_bias, dtype=dtype,
                                    kernel_init=kernel_init),
        valid_conv=functools.partial(conv_lib.Conv, use_bias=use_bias, dtype=dtype,
                                     kernel_init=kernel_init),
        batch_norm=norm_lib.BatchNorm,
        max_pool=pooling.max_pool)
  return Layers(
      conv=conv,
      pointwise=lambda features, name: conv(features, (1, 1), name=name),
      valid_conv=lambda features, kernel_size, strides, name: conv(
          features, kernel_size, strides=strides, padding="VALID", name=name),
      batch_norm=nn.BatchNorm,
      max_pool=_reference_max_pool)

"""Batch normalisation with a hand-written gradient, cheaper for XLA:CPU.

Autodiff of ``nn.BatchNorm`` in training mode gives XLA three reductions and
two elementwise passes over the activations for the backward pass; the closed
form below needs two reductions and one pass (about 3x faster on the stem's
32x48x48x64 map). ``BatchNorm`` here has ``nn.BatchNorm``'s variables (params
``scale``/``bias``, batch_stats ``mean``/``var``), its running-average update
and its fast variance (E[x^2] - E[x]^2, statistics in float32), so checkpoints
and parameter counts are the same and the two are interchangeable.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _stats(x):
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axes)
  var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
  return mean, var


def _forward(x, scale, bias, epsilon):
  mean, var = _stats(x)
  rstd = lax.rsqrt(var + epsilon)
  y = ((x.astype(jnp.float32) - mean) * (scale * rstd) + bias).astype(x.dtype)
  return (y, mean, var), (x, mean, rstd, scale)


def _backward(epsilon, residuals, cotangents):
  del epsilon
  g_y, g_mean, g_var = cotangents
  x, mean, rstd, scale = residuals
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x.astype(jnp.float32) - mean
  x_hat = centred * rstd
  g_y = g_y.astype(jnp.float32)
  sum_g = jnp.sum(g_y, axes)
  sum_g_xhat = jnp.sum(g_y * x_hat, axes)
  g_x = (scale * rstd / n) * (n * g_y - sum_g - x_hat * sum_g_xhat)
  # The statistics are outputs too (for the running averages); their gradient, exactly.
  g_x = g_x + g_mean / n + (2.0 / n) * g_var * centred
  return g_x.astype(x.dtype), sum_g_xhat, sum_g


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_batch(x, scale, bias, epsilon):
  return _forward(x, scale, bias, epsilon)[0]


_normalize_batch.defvjp(_forward, _backward)


def batch_norm_train(x, scale, bias, epsilon):
  """(normalised x, batch mean, batch variance) over all axes but the last."""
  return _normalize_batch(x, scale, bias, epsilon)


class BatchNorm(nn.Module):
  """``nn.BatchNorm`` (last axis, scale and bias) with a cheaper training gradient."""

  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones_init(), features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), features, jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    x = jnp.asarray(x, self.dtype)
    if self.use_running_average:
      y = (x.astype(jnp.float32) - ra_mean.value) * (scale * lax.rsqrt(ra_var.value + self.epsilon))
      return (y + bias).astype(self.dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y

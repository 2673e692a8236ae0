"""Max-pooling with a gradient that XLA's CPU backend runs fast.

``nn.max_pool`` differentiates through ``select_and_scatter``, which XLA:CPU
runs several times slower than the convolutions around it; a plain
``jnp.maximum`` over strided slices differentiates into tie-splitting selects
that XLA fuses with (and recomputes) the whole forward chain. Here the forward
pass keeps, per output, which window position held the maximum (the first one
in row-major window order, the choice ``select_and_scatter`` makes), and the
backward pass routes each output's gradient to that position: the same
function and the same gradient as ``nn.max_pool`` with 'VALID' padding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _geometry(shape, window, strides):
  """Output size and the (row, col) offsets of the window positions."""
  (kh, kw), (sh, sw) = window, strides
  _, h, w, _ = shape
  if h < kh or w < kw:
    raise ValueError(f"input {h}x{w} is smaller than the {kh}x{kw} window")
  offsets = [(i, j) for i in range(kh) for j in range(kw)]
  return (h - kh) // sh + 1, (w - kw) // sw + 1, offsets


def window_slices(x, window, strides):
  """The strided NHWC slices, one per window position (row-major), of 'VALID' windows."""
  ho, wo, offsets = _geometry(x.shape, window, strides)
  sh, sw = strides
  return [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i, j in offsets]


def _forward(x, window, strides, shape):
  del shape  # Static: the backward pass's padding (a residual could become a tracer).
  slices = window_slices(x, window, strides)
  out = functools.reduce(jnp.maximum, slices)
  # Index of the first window position that holds the maximum.
  argmax = jnp.full(out.shape, len(slices) - 1, jnp.int8)
  for k in range(len(slices) - 2, -1, -1):
    argmax = jnp.where(slices[k] == out, jnp.int8(k), argmax)
  return out, argmax


def _backward(window, strides, shape, argmax, g):
  ho, wo, offsets = _geometry(shape, window, strides)
  sh, sw = strides
  _, h, w, _ = shape
  zero = jnp.zeros((), g.dtype)
  grad = None
  for k, (i, j) in enumerate(offsets):
    # Transpose of the strided slice that picked position (i, j): interior padding.
    routed = lax.pad(jnp.where(argmax == k, g, zero), zero,
                     ((0, 0, 0), (i, h - i - sh * (ho - 1) - 1, sh - 1),
                      (j, w - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
    grad = routed if grad is None else grad + routed
  return (grad,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, shape):
  return _forward(x, window, strides, shape)[0]


_max_pool.defvjp(_forward, _backward)


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
  """'VALID' max-pool of NHWC ``x``; same values and gradient as ``nn.max_pool``."""
  if window[0] * window[1] > 127:
    raise ValueError(f"max_pool: a {window} window has more positions than an int8 index holds")
  return _max_pool(x, tuple(window), tuple(strides), tuple(x.shape))

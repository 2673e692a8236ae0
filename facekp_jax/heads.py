"""The heatmap head: per-keypoint maps read out by soft-argmax, in pixels.

The last stage's feature map (5x5 for the seed's two stages) goes through a
1x1 convolution to one map of logits per keypoint, is upsampled bilinearly to
``size`` x ``size`` cells covering the 96x96 image, and each map's spatial
softmax gives a probability over cells whose expected centre is the keypoint.
The expectation is differentiable and not bound to the grid, so coarse maps
still give sub-pixel coordinates.

Pixel-centre convention (``keypoints``): pixel (row i, col j) is centred at
(x=j, y=i), so the image spans [-0.5, 95.5] and a cell k of an ``s``-cell axis
is centred at ``(k + 0.5) * 96 / s - 0.5`` (``k`` itself when ``s`` is 96).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from facekp_jax import keypoints

HEADS = ("regression", "heatmap")


def cell_centres(size: int) -> jnp.ndarray:
  """Pixel coordinates of the centres of ``size`` equal cells across the image."""
  scale = keypoints.IMAGE_SIZE / size
  return (jnp.arange(size, dtype=jnp.float32) + 0.5) * scale - 0.5


def soft_argmax(logits: jnp.ndarray) -> jnp.ndarray:
  """Expected pixel position of each map's spatial softmax.

  Args:
    logits: (B, H, W, K) maps over the whole 96x96 image (row = y, column = x).

  Returns:
    (B, 2K) float32 coordinates ``x0, y0, x1, y1, ...`` in pixels, the Kaggle order.
  """
  b, h, w, k = logits.shape
  flat = jnp.asarray(logits, jnp.float32).reshape(b, h * w, k)
  p = jax.nn.softmax(flat, axis=1).reshape(b, h, w, k)
  x = jnp.einsum("bhwk,w->bk", p, cell_centres(w))
  y = jnp.einsum("bhwk,h->bk", p, cell_centres(h))
  return jnp.stack([x, y], axis=-1).reshape(b, 2 * k)


class HeatmapHead(nn.Module):
  """Feature map (B, h, w, C) -> keypoints (B, 30) in pixels, by soft-argmax.

  Attributes:
    size: side of the upsampled maps (48: 2 px cells).
    dtype: computation dtype of the 1x1 convolution (the softmax is float32).
  """

  size: int = 48
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, features):
    # A dense layer on the channel axis is a 1x1 convolution.
    logits = nn.Dense(keypoints.NUM_KEYPOINTS, dtype=self.dtype, kernel_init=self.kernel_init,
                      name="keypoint_maps")(features)
    logits = jnp.asarray(logits, jnp.float32)
    if logits.shape[1:3] != (self.size, self.size):
      logits = jax.image.resize(logits, (logits.shape[0], self.size, self.size, logits.shape[3]),
                                method="bilinear")
    return soft_argmax(logits)

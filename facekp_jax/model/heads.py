"""The heatmap head: per-keypoint maps read out by soft-argmax, in pixels.

The last stage's feature map (5x5 for the seed's two stages) goes through a
1x1 convolution to one map of logits per keypoint (with ``finer`` maps, earlier
stages' logits are added top-down: ``resnet.ResNet.heatmap_stages``), is upsampled bilinearly to
``size`` x ``size`` cells covering the 96x96 image, and each map's spatial
softmax gives a probability over cells whose expected centre is the keypoint.
The expectation is differentiable and not bound to the grid, so coarse maps
still give sub-pixel coordinates.

Bilinear upsampling holds the logits constant beyond the feature map's outermost
cell centres (for the seed's 5x5 map, outside [9.1, 85.9] px), so a map peaked on
an outer cell spreads its mass evenly up to the frame's edge, and the expectation
stops short of it: predictions of labels at the edge saturate near 90 px. A
``margin`` (pixels, a whole number of cells) extends that constant strip past the
frame on every side (edge replication of the upsampled logits): the maps then
cover [-0.5 - margin, 95.5 + margin]^2, the interior logits are unchanged, and a
keypoint at or beyond the edge of the crop (faces in strong poses, or pushed off
by geometric augmentation) can be placed. ``margin=0`` is the original head.
(Continuing the logits linearly into the margin instead was tried and trains far
worse: experiments/README.md, study ``margin``.)

Pixel-centre convention (``keypoints``): pixel (row i, col j) is centred at
(x=j, y=i), so the image spans [-0.5, 95.5] and a cell k of an ``s``-cell axis
is centred at ``(k + 0.5) * 96 / s - 0.5`` (``k`` itself when ``s`` is 96).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from facekp_jax.core import keypoints

HEADS = ("regression", "heatmap")
LOGITS = "logits"  # The maps' name among the head's sown intermediates.
CONFIDENCE_RADIUS = 8.0  # px: ``confidence``'s disc (experiments/README.md, confidence).


def cell_centres(size: int, margin: float = 0.0) -> jnp.ndarray:
  """Pixel coordinates of the centres of ``size`` equal cells across the image and a margin
  of ``margin`` pixels on both sides."""
  scale = (keypoints.IMAGE_SIZE + 2 * margin) / size
  return (jnp.arange(size, dtype=jnp.float32) + 0.5) * scale - 0.5 - margin


def margin_cells(size: int, margin: float) -> int:
  """Cells that a margin of ``margin`` pixels adds on each side of ``size`` cells over the frame
  (``margin`` must be a whole number of cells: ``training.config`` checks it)."""
  return int(round(margin * size / keypoints.IMAGE_SIZE))


def soft_argmax(logits: jnp.ndarray, margin: float = 0.0) -> jnp.ndarray:
  """Expected pixel position of each map's spatial softmax.

  Args:
    logits: (B, H, W, K) maps over the whole 96x96 image and a margin of ``margin`` pixels
      on each side (row = y, column = x).
    margin: the maps' margin beyond the frame, in pixels.

  Returns:
    (B, 2K) float32 coordinates ``x0, y0, x1, y1, ...`` in pixels, the Kaggle order.
  """
  b, h, w, k = logits.shape
  flat = jnp.asarray(logits, jnp.float32).reshape(b, h * w, k)
  p = jax.nn.softmax(flat, axis=1).reshape(b, h, w, k)
  x = jnp.einsum("bhwk,w->bk", p, cell_centres(w, margin))
  y = jnp.einsum("bhwk,h->bk", p, cell_centres(h, margin))
  return jnp.stack([x, y], axis=-1).reshape(b, 2 * k)


def confidence(logits: jnp.ndarray, margin: float = 0.0,
               radius: float = CONFIDENCE_RADIUS) -> jnp.ndarray:
  """How sure each map is of its keypoint: the share of its softmax's mass within ``radius``
  pixels of its soft-argmax (1: all of it there; a diffuse or many-peaked map, less).

  Args:
    logits: (B, H, W, K) maps over the frame and ``margin`` pixels beyond (``LOGITS``).
    margin: the maps' margin beyond the frame, in pixels.
    radius: the disc's radius in pixels.

  Returns:
    (B, K) float32 in [0, 1].
  """
  b, h, w, k = logits.shape
  p = jax.nn.softmax(jnp.asarray(logits, jnp.float32).reshape(b, h * w, k), axis=1)
  p = p.reshape(b, h, w, k)
  xy = soft_argmax(logits, margin).reshape(b, k, 2)
  dx = cell_centres(w, margin)[None, None, :, None] - xy[:, None, None, :, 0]  # (B, 1, W, K)
  dy = cell_centres(h, margin)[None, :, None, None] - xy[:, None, None, :, 1]  # (B, H, 1, K)
  near = (jnp.square(dx) + jnp.square(dy)) <= radius ** 2
  return jnp.clip(jnp.sum(jnp.where(near, p, 0.0), axis=(1, 2)), 0.0, 1.0)  # Float sums.


class HeatmapHead(nn.Module):
  """Feature map (B, h, w, C) -> keypoints (B, 2K) in pixels, by soft-argmax (K maps).

  With ``finer`` feature maps (earlier stages' outputs, finest last), each gets its own 1x1
  convolution to keypoint logits, and the coarser logits are upsampled bilinearly and added
  (a top-down sum, as feature pyramids do), so that the maps localise at the finer stride.

  Attributes:
    size: cells of the upsampled maps across the frame (48: 2 px cells).
    margin: pixels the maps extend beyond the frame on each side (a whole number of cells);
      the maps then have ``size + 2 * margin_cells(size, margin)`` cells a side.
    dtype: computation dtype of the 1x1 convolution (the softmax is float32).
    num_keypoints: K, the layout's keypoints (one map each).
  """

  size: int = 48
  margin: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  num_keypoints: int = 15

  @nn.compact
  def __call__(self, features, finer=()):
    # A dense layer on the channel axis is a 1x1 convolution.
    logits = nn.Dense(self.num_keypoints, dtype=self.dtype, kernel_init=self.kernel_init,
                      name="keypoint_maps")(features)
    logits = jnp.asarray(logits, jnp.float32)
    for i, f in enumerate(finer):
      fine = nn.Dense(self.num_keypoints, dtype=self.dtype, kernel_init=self.kernel_init,
                      name=f"finer_maps{i + 1}")(f)
      logits = jax.image.resize(logits, (*fine.shape[:3], logits.shape[3]), method="bilinear")
      logits = logits + jnp.asarray(fine, jnp.float32)
    if logits.shape[1:3] != (self.size, self.size):
      logits = jax.image.resize(logits, (logits.shape[0], self.size, self.size, logits.shape[3]),
                                method="bilinear")
    if self.margin:  # The constant strips beyond the outer feature centres, widened.
      p = margin_cells(self.size, self.margin)
      logits = jnp.pad(logits, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    # The maps themselves, for whoever applies the model with mutable=["intermediates"]
    # (other read-outs: experiments/decoding.py); free otherwise.
    self.sow("intermediates", LOGITS, logits)
    return soft_argmax(logits, self.margin)

"""The masked losses on pixel coordinates: mse, l1, smooth_l1 and wing, as (sum, count).

Each loss is a function of the (B, 2K) pixel predictions, targets and mask that
returns ``(sum over present coordinates, their count)``; training takes the mean
``sum / max(count, 1)``, so missing coordinates neither pull nor dilute it.
Every reported figure (train RMSE, validation RMSE) is in pixels whatever loss
trains the model; the loss itself is only the gradient's shape.

  mse:        e^2 (the seed's).
  l1:         |e|.
  smooth_l1:  e^2 / (2 beta) below ``smooth_l1_beta`` px, |e| - beta / 2 above (Huber / beta).
  wing:       w ln(1 + |e| / epsilon) below ``wing_w`` px, |e| - C above, with
              C = w - w ln(1 + w / epsilon) so that the two pieces meet (Feng et al.,
              "Wing loss for robust facial landmark localisation with CNNs", CVPR 2018).
              Its log region amplifies small and medium errors, which MSE all but ignores.

The heatmap head's maps may also be pulled toward a Gaussian at each label (``map_kl``), added
to the coordinate loss with its weight: DSNT's regularisation of soft-argmax maps (Nibali et
al., "Numerical coordinate regression with convolutional neural networks", 2018), here as the
KL divergence of the map from the target. The soft-argmax alone fixes only a map's
expectation; the divergence also makes its mass compact, one mode at the label.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from facekp_jax.model import heads

LOSSES = ("mse", "l1", "smooth_l1", "wing")


def masked_sse(predictions, targets, mask):
  """Returns (sum of squared errors over present coordinates, their count): the figure every
  reported RMSE comes from, whichever loss trains."""
  return jnp.sum(mask * jnp.square(predictions - targets)), jnp.sum(mask)


def masked_mse(predictions, targets, mask):
  """Mean squared error over the present coordinates (0 when none is present)."""
  sse, count = masked_sse(predictions, targets, mask)
  return sse / jnp.maximum(count, 1.0)


def _elementwise(name: str, config):
  """The per-coordinate loss of absolute errors, for ``config.loss``."""
  if name == "mse":
    return jnp.square
  if name == "l1":
    return lambda a: a
  if name == "smooth_l1":
    beta = config.smooth_l1_beta
    return lambda a: jnp.where(a < beta, 0.5 * jnp.square(a) / beta, a - 0.5 * beta)
  if name == "wing":
    w, eps = config.wing_w, config.wing_epsilon
    c = w - w * jnp.log1p(w / eps)
    return lambda a: jnp.where(a < w, w * jnp.log1p(a / eps), a - c)
  raise ValueError(f"loss must be one of {list(LOSSES)}, got {name!r}")


def masked_sum(config):
  """``(predictions, targets, mask) -> (sum of the loss over present coordinates, count)``."""
  per_coordinate = _elementwise(config.loss, config)

  def loss(predictions, targets, mask):
    # Masked coordinates get a zero error (not just a zero weight): no NaN or slope leaks.
    error = jnp.where(mask > 0, jnp.abs(predictions - targets), 0.0)
    return jnp.sum(mask * per_coordinate(error)), jnp.sum(mask)

  return loss


def gaussian_log_maps(targets, size: int, margin: float, sigma: float):
  """(B, 2K) pixel labels -> (B, H, W, K) log-probabilities of Gaussians of ``sigma`` px over
  the cells of a heatmap head's maps (``heads.cell_centres``), each normalised over the cells
  (the softmax's support)."""
  b, k = targets.shape[0], targets.shape[1] // 2
  centres = heads.cell_centres(size, margin)
  points = targets.reshape(b, k, 2)
  gx = -jnp.square(centres[None, :, None] - points[:, None, :, 0]) / (2 * sigma ** 2)  # (B,W,K)
  gy = -jnp.square(centres[None, :, None] - points[:, None, :, 1]) / (2 * sigma ** 2)  # (B,H,K)
  logits = (gy[:, :, None, :] + gx[:, None, :, :]).reshape(b, size * size, k)
  return jax.nn.log_softmax(logits, axis=1).reshape(b, size, size, k)


def map_kl(logits, targets, mask, *, sigma: float, margin: float = 0.0):
  """Returns (sum over present keypoints of KL(q || p), in nats, their count): q a Gaussian of
  ``sigma`` px at the label over the map's cells, p the map's softmax.

  That is the maps' cross-entropy against Gaussian targets less the targets' own entropy (0
  when a map is its target); its gradient on the logits is p - q, which does not vanish while
  the map is still diffuse (the Jensen-Shannon divergence's does: at ln 2 it is flat).
  ``logits``: (B, H, W, K) maps over the frame and ``margin`` px beyond (the head's sown
  ``heads.LOGITS``); ``mask``: (B, 2K), a keypoint present when both its coordinates are.
  """
  b, h, w, k = logits.shape
  log_p = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32).reshape(b, h * w, k), axis=1)
  # A missing label's coordinates may be anything: a Gaussian anywhere, masked out below.
  safe = jnp.where(mask > 0, targets, 0.0)
  log_q = gaussian_log_maps(safe, h, margin, sigma).reshape(b, h * w, k)
  kl = jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=1)
  present = mask[:, 0::2] * mask[:, 1::2]  # (B, K)
  return jnp.sum(present * kl), jnp.sum(present)


def map_sum(config):
  """``(logits, targets, mask) -> (weighted divergence sum, keypoints)`` for
  ``config.heatmap_loss`` (its weight), or None when it is 0 or the head has no maps (the
  regression head: like the other ``heatmap_*`` fields, the weight is the heatmap head's)."""
  weight = config.heatmap_loss
  if not weight or config.model.head != "heatmap":
    return None

  def loss(logits, targets, mask):
    total, count = map_kl(logits, targets, mask, sigma=config.heatmap_loss_sigma,
                          margin=config.model.heatmap_margin)
    return weight * total, count

  return loss

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
"""

from __future__ import annotations

import jax.numpy as jnp

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

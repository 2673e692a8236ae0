"""The pure ``train_step`` and ``Trainer``, which jits it once over the device mesh.

``train_step`` is a pure function of its arguments; ``Trainer`` jits it (and the on-device
pipeline's several-steps call) over a 1-D data mesh with the state replicated and donated, so
parameters never leave the devices between steps. Its ``predict`` (validation) goes through
``model.apply.Inference`` with ``state.inference_variables``, the serving predictor's path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from facekp_jax.core import keypoints, sharding
from facekp_jax.data import on_device
from facekp_jax.model import apply, heads, losses, resnet
from facekp_jax.training import state as state_lib


def in_frame(targets, margin: float = 0.0) -> jax.Array:
  """1 where a keypoint (both its coordinates) lies on the 96x96 frame [-0.5, 95.5]^2 widened
  by ``margin`` pixels on each side."""
  points = targets.reshape(targets.shape[0], -1, 2)
  inside = jnp.all((points >= -0.5 - margin) & (points <= keypoints.IMAGE_SIZE - 0.5 + margin),
                   axis=-1)
  return jnp.repeat(inside, 2, axis=1).astype(targets.dtype)


def head_reach(m) -> float | None:
  """Pixels beyond the frame that a ``config.model``'s head can place a keypoint (None: any)."""
  return m.heatmap_margin if m.head == "heatmap" else None


def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array], *,
               loss_sum=losses.masked_sse, ema_decay: float = 0.0,
               reach: float | None = None, map_sum=None) -> tuple[state_lib.TrainState, dict]:
  """One optimizer step on the masked mean loss of a global batch.

  Args:
    state: the replicated train state.
    batch: ``images`` (B, 96, 96, 1), ``targets`` (B, 2K), ``mask`` (B, 2K).
    loss_sum: ``(predictions, targets, mask) -> (sum, count)`` (``losses.masked_sum``);
      the default is the masked squared error in pixels^2.
    ema_decay: the parameter EMA's decay (0: no EMA; the state's ``ema_params`` is None).
    reach: None (every label counts), or how many pixels beyond the frame the model can place
      a keypoint (the heatmap head's margin): labels further out leave the loss, since its
      maps cannot reach them; ``count`` then omits them.
    map_sum: None, or ``(logits, targets, mask) -> (sum, count)`` on the heatmap head's maps
      (``losses.map_sum``), whose mean is added to the coordinate loss.

  Returns:
    The new state and ``{"sse", "count"}`` of this batch (on device): the squared error in
    pixels^2 whatever the loss, so that the reported train RMSE is always in pixels.
  """
  dropout_key = jax.random.fold_in(state.rng, state.step)
  mask = batch["mask"] if reach is None else batch["mask"] * in_frame(batch["targets"], reach)

  def loss_fn(params):
    predictions, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["images"], train=True,
        rngs={"dropout": dropout_key},
        mutable=["batch_stats"] + (["intermediates"] if map_sum else []))
    total, count = loss_sum(predictions, batch["targets"], mask)
    loss = total / jnp.maximum(count, 1.0)
    if map_sum:
      (logits,) = updates["intermediates"]["heatmap"][heads.LOGITS]
      map_total, map_count = map_sum(logits, batch["targets"], mask)
      loss = loss + map_total / jnp.maximum(map_count, 1.0)
    sse, _ = losses.masked_sse(predictions, batch["targets"], mask)
    return loss, (updates["batch_stats"], sse, count)

  grads, (batch_stats, sse, count) = jax.grad(loss_fn, has_aux=True)(state.params)
  with jax.named_scope("optimizer"):  # Names a profile's ops (experiments/op_profile.py).
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    with jax.named_scope("ema"):
      state = state.replace(ema_params=state_lib.ema_update(
          state.ema_params, state.params, state_lib.ema_decay_at(ema_decay, state.step)))
  return state, {"sse": sse, "count": count}


class Trainer:
  """The jitted steps of one model over one mesh (compiled once, reused)."""

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    self.layout = keypoints.get(config.data.keypoints)
    self.model = resnet.create_model(config, dtype=resnet.compute_dtype(config))
    rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = functools.partial(train_step, loss_sum=losses.masked_sum(config),
                             ema_decay=config.ema_decay,
                             reach=head_reach(config.model), map_sum=losses.map_sum(config))
    self.train_step = jax.jit(step, in_shardings=(rep, shard), out_shardings=(rep, rep),
                              donate_argnums=0)
    # Input on the devices: several steps per call over a device copy of the training split.
    steps_shard = sharding.steps_sharded(mesh)
    self.train_steps = jax.jit(
        on_device.make_train_steps(step, config.augment, self.layout),
        in_shardings=(rep, rep, steps_shard, steps_shard), out_shardings=(rep, rep),
        donate_argnums=0)
    self.inference = apply.Inference(self.model, mesh, config.eval_batch_size)

  def init_state(self, steps_per_epoch: int | None = None) -> state_lib.TrainState:
    return state_lib.create_train_state(self.config, self.model, self.mesh, steps_per_epoch)

  def abstract_state(self, steps_per_epoch: int | None = None) -> state_lib.TrainState:
    """``init_state``'s shapes and dtypes, traced but not compiled or run: the target of a
    restore (compiling the random initialiser would cost a resume seconds for nothing)."""
    return jax.eval_shape(lambda: self.init_state(steps_per_epoch))

  def predict(self, state: state_lib.TrainState, images: np.ndarray, tta: bool = False,
              ema: bool = True) -> np.ndarray:
    """(N, 96, 96, 1) images -> (N, 2K) pixels with ``state``'s inference weights (``ema``:
    the EMA's where there is one); ``tta``: the test-time average over the flips and the
    turned views of ``config.tta_rotations``."""
    return self.inference(state_lib.inference_variables(state, ema), images,
                          self.config.tta_rotations if tta else None)

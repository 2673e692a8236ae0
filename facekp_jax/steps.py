"""The train state, masked losses, the pure ``train_step``/``predict_step``, and ``Trainer``.

``train_step`` and ``predict_step`` are pure functions of their arguments; ``Trainer`` jits
them once over a 1-D data mesh with the state replicated and donated, so parameters never leave
the devices between steps, and pads ``predict``'s batches. Everything that runs a trained model
(``inference``, ``evaluate``, ``predict``, ``export``) comes here; the loop is ``train``'s.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from facekp_jax import augment, data, device_input, keypoints, losses, models, optim, sharding


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step (from flax), batch-norm statistics, the RNG and EMA.

  ``ema_params`` is the parameters' exponential moving average when ``config.ema_decay``
  is on (``None`` otherwise: the state then has the tree of runs from before the EMA), and
  it is what ``predict_step`` uses: validation, the best checkpoint, evaluate and predict.
  """

  batch_stats: Any
  rng: jax.Array
  ema_params: Any = None


def ema_decay_at(decay: float, step):
  """The EMA's decay after ``step`` updates: ``min(decay, (1 + step) / (10 + step))``.

  The warm-up (as TensorFlow's ExponentialMovingAverage with ``num_updates``) lets the
  average follow the fast early changes instead of holding the initial weights for
  ~1 / (1 - decay) steps.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay):
  """``decay * ema + (1 - decay) * params``, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def masked_sse(predictions, targets, mask):
  """Returns (sum of squared errors over present coordinates, their count)."""
  return jnp.sum(mask * jnp.square(predictions - targets)), jnp.sum(mask)


def masked_mse(predictions, targets, mask):
  """Mean squared error over the present coordinates (0 when none is present)."""
  sse, count = masked_sse(predictions, targets, mask)
  return sse / jnp.maximum(count, 1.0)


def create_train_state(config, model, mesh, steps_per_epoch: int | None = None) -> TrainState:
  """Initialises the state from ``config.seed``, replicated over ``mesh``.

  ``steps_per_epoch`` shapes a learning-rate schedule; ``None`` will do for a restore target.
  """
  root = jax.random.key(config.seed)
  init_key, state_key = jax.random.split(root)
  tx = optim.make_optimizer(config, steps_per_epoch)

  def init():
    variables = model.init({"params": init_key}, jnp.zeros((1, 96, 96, 1), jnp.float32),
                           train=False)
    params = variables["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             batch_stats=variables["batch_stats"], rng=state_key,
                             ema_params=params if config.ema_decay else None)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))()


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


def train_step(state: TrainState, batch: dict[str, jax.Array], *, loss_sum=masked_sse,
               ema_decay: float = 0.0, reach: float | None = None) -> tuple[TrainState, dict]:
  """One optimizer step on the masked mean loss of a global batch.

  Args:
    state: the replicated train state.
    batch: ``images`` (B, 96, 96, 1), ``targets`` (B, 30), ``mask`` (B, 30).
    loss_sum: ``(predictions, targets, mask) -> (sum, count)`` (``losses.masked_sum``);
      the default is the masked squared error in pixels^2.
    ema_decay: the parameter EMA's decay (0: no EMA; the state's ``ema_params`` is None).
    reach: None (every label counts), or how many pixels beyond the frame the model can place
      a keypoint (the heatmap head's margin): labels further out leave the loss, since its
      maps cannot reach them; ``count`` then omits them.

  Returns:
    The new state and ``{"sse", "count"}`` of this batch (on device): the squared error in
    pixels^2 whatever the loss, so that the reported train RMSE is always in pixels.
  """
  dropout_key = jax.random.fold_in(state.rng, state.step)
  mask = batch["mask"] if reach is None else batch["mask"] * in_frame(batch["targets"], reach)

  def loss_fn(params):
    predictions, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["images"], train=True,
        rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    total, count = loss_sum(predictions, batch["targets"], mask)
    sse, _ = masked_sse(predictions, batch["targets"], mask)
    return total / jnp.maximum(count, 1.0), (updates["batch_stats"], sse, count)

  grads, (batch_stats, sse, count) = jax.grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    state = state.replace(ema_params=ema_update(state.ema_params, state.params,
                                                ema_decay_at(ema_decay, state.step)))
  return state, {"sse": sse, "count": count}


def predict_step(state: TrainState, images: jax.Array) -> jax.Array:
  """Keypoints in pixels (B, 30): the EMA parameters when there are, running batch statistics."""
  params = state.params if state.ema_params is None else state.ema_params
  return state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                        train=False)


class Trainer:
  """The jitted steps of one model over one mesh (compiled once, reused)."""

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    self.model = models.create_model(config, dtype=dtype)
    rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = functools.partial(train_step, loss_sum=losses.masked_sum(config),
                             ema_decay=config.ema_decay,
                             reach=head_reach(config.model))
    self.train_step = jax.jit(step, in_shardings=(rep, shard), out_shardings=(rep, rep),
                              donate_argnums=0)
    self.predict_step = jax.jit(predict_step, in_shardings=(rep, shard), out_shardings=rep)
    # Input on the devices: several steps per call over a device copy of the training split.
    steps_shard = sharding.steps_sharded(mesh)
    self.train_steps = jax.jit(
        device_input.make_train_steps(step, config.augment),
        in_shardings=(rep, rep, steps_shard, steps_shard), out_shardings=(rep, rep),
        donate_argnums=0)
    self.eval_batch_size = _round_up(config.eval_batch_size, mesh.devices.size)

  def init_state(self, steps_per_epoch: int | None = None) -> TrainState:
    return create_train_state(self.config, self.model, self.mesh, steps_per_epoch)

  def predict_batch_size(self, n: int) -> int:
    """The batch that ``predict`` pads a call of ``n`` images to.

    The next power of two >= ``n``, at most ``config.eval_batch_size``, rounded up to a
    multiple of the device count: one face costs a batch of one (not 128), and a process
    compiles at most log2(eval_batch_size) + 1 shapes.
    """
    bound = min(1 << max(n - 1, 0).bit_length(), self.config.eval_batch_size)
    return _round_up(bound, self.mesh.devices.size)

  def predict(self, state: TrainState, images: np.ndarray, tta: bool = False) -> np.ndarray:
    """Predicts every image (N, 96, 96, 1) in padded batches; returns (N, 30) pixels.

    Batches of ``predict_batch_size(N)``; with ``tta``, each prediction is the test-time
    average of the flips and the turned views of ``config.tta_rotations``
    (``augment.tta_average``).
    """
    if tta:
      return augment.tta_average(lambda x: self.predict(state, x), images,
                                 self.config.tta_rotations)
    n = len(images)
    faces = data.Faces(images, np.zeros((n, 30), np.float32), np.zeros((n, 30), np.float32))
    out = []
    for batch in data.eval_batches(faces, self.predict_batch_size(n)):
      local = sharding.process_slice(batch.images)
      out.append(self.predict_step(state, sharding.to_global(local, self.mesh)))
    return np.concatenate(jax.device_get(out))[:n]


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple

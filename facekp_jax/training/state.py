"""The train state: parameters, optimizer state, batch statistics, the RNG and the parameter EMA.

``create_train_state`` initialises it from ``config.seed``, replicated over the mesh;
``inference_variables`` is the one choice of the weights a trained model predicts with
(the EMA where the run keeps one), for validation, checkpoints' scores, evaluate, predict
and export alike.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state

from facekp_jax.core import sharding
from facekp_jax.training import optim


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step (from flax), batch-norm statistics, the RNG and EMA.

  ``ema_params`` is the parameters' exponential moving average when ``config.ema_decay``
  is on (``None`` otherwise: the state then has the tree of runs from before the EMA), and
  it is what ``inference_variables`` chooses: validation, the best checkpoint, evaluate, predict
  and export.
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


def inference_variables(state: TrainState, ema: bool = True) -> dict:
  """The variables a trained model predicts with: the EMA parameters when the run keeps them
  (and ``ema``), else the parameters; the running batch statistics."""
  params = state.params if state.ema_params is None or not ema else state.ema_params
  return {"params": params, "batch_stats": state.batch_stats}

"""A trained model's weights, read from a workdir's checkpoint or a packed model; a run started
from them (``config.init_from``).

``read`` is the one reader: ``serving.predictor.load`` predicts with what it returns, and a run
whose ``config.init_from`` names a workdir, a packed model or ``shipped`` (``SHIPPED``, the
model in the package) starts from it (``initial``, then ``start_from``): the parameters and
batch statistics (the inference weights: the EMA where that run kept one) replace the fresh
ones; the optimizer, its schedule and the step start afresh. The model must be the same network
with the same keypoint layout; anything else is a ``ConfigError`` naming the difference, raised
before the run writes anything.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from facekp_jax.core import keypoints, sharding
from facekp_jax.core.errors import ConfigError, WorkdirError
from facekp_jax.model import resnet
from facekp_jax.training import checkpoint, state
from facekp_jax.training import config as config_lib

# The model shipped in the package: 5 points (MTFL), trained by experiments/ship_model.py.
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                       "mtfl5")
PACKED_WEIGHTS = "weights.npz"


def is_packed(path: str) -> bool:
  return os.path.isfile(os.path.join(path, PACKED_WEIGHTS))


def read(path: str, config, model, mesh, which: str = "best",
         ema: bool = True) -> tuple[dict, int, str]:
  """(variables on ``mesh``, step, which) of a workdir's ``best`` or ``latest`` checkpoint
  (``state.inference_variables``: the EMA where kept, unless ``ema=False``), or of a packed
  model (``which`` is then "packed"). ``config`` and ``model`` are the run's own.

  Raises:
    WorkdirError: no checkpoint, or weights that do not fit ``model``; one line.
  """
  if is_packed(path):
    return _read_packed(path, model, mesh), _packed_step(path), "packed"
  restored, _ = checkpoint.restore_trained(
      path, lambda: state.create_train_state(config, model, mesh), which)
  return state.inference_variables(restored, ema), int(jax.device_get(restored.step)), which


def _packed_step(path: str) -> int:
  try:
    with open(os.path.join(path, "model.json")) as f:
      return int(json.load(f)["step"])
  except (OSError, ValueError, KeyError) as e:
    raise WorkdirError(f"packed model {path}: cannot read model.json ({e})") from None


def _read_packed(path: str, model, mesh) -> dict:
  """The packed weights (float32 again) in the structure of ``model``'s variables, replicated."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, keypoints.IMAGE_SIZE, keypoints.IMAGE_SIZE, 1),
                                  np.float32), train=False))
  try:
    with np.load(os.path.join(path, PACKED_WEIGHTS)) as blob:
      stored = {k: blob[k] for k in blob.files}
  except (OSError, ValueError) as e:
    raise WorkdirError(f"packed model {path}: cannot read {PACKED_WEIGHTS} ({e})") from None
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for key_path, leaf in leaves:
    key = _key(key_path)
    if key not in stored or stored[key].shape != leaf.shape:
      raise WorkdirError(f"packed model {path}: {PACKED_WEIGHTS} does not fit config.json's "
                         f"model ({key})")
    out.append(stored[key].astype(np.float32))
  return jax.device_put(jax.tree_util.tree_unflatten(tree, out), sharding.replicated(mesh))


def _key(key_path) -> str:
  """A leaf's path in a variables tree as text: ``params/stem/conv/kernel``."""
  return "/".join(str(getattr(k, "key", k)) for k in key_path)


def flat(variables) -> dict[str, np.ndarray]:
  """``variables`` as {path text: host array}, what a packed model stores (``pack``)."""
  return {_key(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]}


# ----------------------------------------------------------------------------- init_from


def initial(config, layout: keypoints.Layout, mesh) -> tuple[dict, str] | None:
  """The weights ``config.init_from`` names, read for a run on ``layout``'s keypoints, and a
  line saying where they came from; None where it names none.

  Raises:
    ConfigError: no such workdir or packed model, another keypoint layout, or another network.
  """
  name = config.get("init_from", "")
  if not name:
    return None
  path = SHIPPED if name == "shipped" else name
  if not os.path.isdir(path):
    raise ConfigError(f"config.init_from {name}: no such workdir or packed model (a trained "
                      "workdir, a packed model's folder, or 'shipped')")
  try:
    source = config_lib.read_config(path)
  except WorkdirError as e:
    raise ConfigError(f"config.init_from: {e}") from None
  if source.data.keypoints != layout.name:
    raise ConfigError(
        f"config.init_from {name}: its model reads {source.data.keypoints} keypoints, this "
        f"run's data {layout.name}; start from a model of the same layout (or set "
        f"config.data.keypoints={source.data.keypoints} where the data has those points)")
  theirs, mine = _network(source), _network(config)
  if theirs != mine:
    differs = ", ".join(f"model.{k}" for k in sorted(theirs) if mine.get(k) != theirs[k])
    raise ConfigError(f"config.init_from {name}: another network ({differs} differ); fine-tune "
                      "with the model settings it was trained with")
  model = resnet.create_model(source, dtype=resnet.compute_dtype(source))
  try:
    variables, step, which = read(path, source, model, mesh, "best")
  except WorkdirError as e:
    raise ConfigError(f"config.init_from: {e}") from None
  return variables, f"{path} ({which} checkpoint, step {step})"


# Model fields that shape only training (or the start): a run may start from weights trained
# under other values of them.
_TRAINING_ONLY = ("dropout_rates", "kernel_init", "fast_ops")


def _network(config) -> dict:
  """What makes the network and says what its outputs mean: the model fields but those."""
  return {k: v for k, v in config.model.to_dict().items() if k not in _TRAINING_ONLY}


def _shapes(tree) -> dict[str, tuple]:
  return {_key(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def start_from(train_state: state.TrainState, variables: dict,
               ema: bool) -> state.TrainState:
  """``train_state`` with ``variables``' parameters and batch statistics (and, with ``ema``, an
  EMA that starts at them); its optimizer state and step stay as they were (fresh).

  Raises:
    ConfigError: a leaf whose shape differs (another network).
  """
  for part, mine in (("params", train_state.params), ("batch_stats", train_state.batch_stats)):
    want, have = _shapes(mine), _shapes(variables[part])
    if want != have:
      bad = sorted(set(want.items()) ^ set(have.items()))[0][0]
      raise ConfigError(f"config.init_from: its {part} do not fit this run's model ({bad})")
  params = variables["params"]
  # The EMA's own copy: the training step donates the state, one buffer may not go twice.
  return train_state.replace(params=params, batch_stats=variables["batch_stats"],
                             ema_params=jax.tree.map(jnp.copy, params) if ema else None)

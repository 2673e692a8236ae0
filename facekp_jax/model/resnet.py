"""The architecture: the seed's deep residual network in Flax linen, built from ``ops.layers``.

Architecture (the seed's Keras model, with a linear output by default):
  stem:   zero-pad 3, 7x7/2 conv, batch norm, ReLU, 3x3/2 max-pool;
  stages: bottleneck blocks (1x1 -> 3x3 -> 1x1 convs with batch norm and ReLU).
          The first block of a stage down-samples with a 2x2 max-pool on the
          main path (after its first 1x1 conv) and on the 1x1-conv shortcut; the
          rest are identity blocks;
  head:   2x2 average pool, flatten, dense 4096 + ReLU, dropout 0.2,
          dense 2048 + ReLU, dropout 0.1, dense 30;
          or (``head="heatmap"``) per-keypoint maps read out by soft-argmax
          (``facekp_jax/model/heads.py``), with no dense layers.

The network predicts keypoints in *pixels*: its last dense layer is followed by
a fixed affine map ``y * output_scale + output_offset`` so that the trainable
part works on targets of unit scale (48 px -> 1) while every number that leaves
the model is in pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facekp_jax.core import keypoints
from facekp_jax.model import heads
from facekp_jax.model.ops import layers

# Keras' BatchNormalization defaults, as in the seed.
_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3

OUTPUT_ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "linear": lambda x: x,
    "relu": nn.relu,
}
HEADS = heads.HEADS
# Kernel initialisers by name: Flax's default, and Keras' (the seed's) for parity studies.
KERNEL_INITS = {"lecun_normal": nn.initializers.lecun_normal(),
                "glorot_uniform": nn.initializers.glorot_uniform()}


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 -> 1x1 residual block; optionally down-samples by 2x2 max-pool."""

  filters: tuple[int, int, int]
  downsample: bool
  conv: Callable[..., nn.Module]
  pointwise: Callable[..., nn.Module]
  pool: Callable[[jnp.ndarray], jnp.ndarray]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    f1, f2, f3 = self.filters
    y = self.pointwise(f1, name="conv1")(x)
    if self.downsample:
      y = self.pool(y)
    y = nn.relu(self.norm(name="norm1")(y))
    y = self.conv(f2, (3, 3), padding="SAME", name="conv2")(y)
    y = nn.relu(self.norm(name="norm2")(y))
    y = self.pointwise(f3, name="conv3")(y)
    y = self.norm(name="norm3")(y)
    if self.downsample or x.shape[-1] != f3:
      shortcut = self.pointwise(f3, name="shortcut_conv")(x)
      if self.downsample:
        shortcut = self.pool(shortcut)
      shortcut = self.norm(name="shortcut_norm")(shortcut)
    else:
      shortcut = x
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """Keypoint regression ResNet.

  Attributes:
    stage_filters: (f1, f2, f3) per stage.
    stage_blocks: number of blocks per stage (the first one down-samples).
    stem_filters: filters of the 7x7 stem convolution.
    dense_sizes: hidden dense layers of the head.
    dropout_rates: dropout after each hidden dense layer.
    head: "regression" (default: pool, dense layers, 30 outputs) or "heatmap"
      (``heads.HeatmapHead`` on the last stage's map; ignores the dense and
      output fields below).
    heatmap_size: cells of the heatmap head's upsampled maps across the frame.
    heatmap_margin: pixels the heatmap head's maps reach beyond the frame on each side.
    heatmap_stages: how many of the last feature levels feed the heatmap head (1: the last
      stage only, the seed's 5x5 map; 2: also the stage before, 11x11, added top-down; one
      more than the stages: also the stem's 23x23 map, the finest level).
    output_activation: "linear" (default) or "relu" (the seed's fault).
    output_scale, output_offset: fixed affine map from the last layer to pixels.
    conv_bias: whether convolutions carry a bias (the seed's do; it is redundant
      before batch norm).
    kernel_init: "lecun_normal" (Flax's default) or "glorot_uniform" (Keras', the
      seed's) for every convolution and dense kernel; biases start at zero.
    fast_ops: compute 1x1 convolutions as 2-D matrix products, and the stem
      convolution, max-pools and batch norms with cheaper gradients (same
      parameters and function; faster on CPU).
      False uses the plain ``nn.Conv`` / ``nn.max_pool`` reference path
      (``ops.layers.make``).
    layout: the keypoint layout's name (``core.keypoints``): 2K outputs, K heatmaps.
    dtype: computation dtype (parameters stay float32).
  """

  stage_filters: Sequence[tuple[int, int, int]] = ((64, 64, 256), (128, 128, 512))
  stage_blocks: Sequence[int] = (3, 3)
  stem_filters: int = 64
  dense_sizes: Sequence[int] = (4096, 2048)
  dropout_rates: Sequence[float] = (0.2, 0.1)
  head: str = "regression"
  heatmap_size: int = 48
  heatmap_margin: float = 0.0
  heatmap_stages: int = 1
  output_activation: str = "linear"
  output_scale: float = 48.0
  output_offset: float = 48.0
  conv_bias: bool = True
  kernel_init: str = "lecun_normal"
  fast_ops: bool = True
  layout: str = keypoints.DEFAULT.name
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    init = KERNEL_INITS[self.kernel_init]
    ops = layers.make(self.fast_ops, use_bias=self.conv_bias, dtype=self.dtype, kernel_init=init)
    norm = functools.partial(ops.batch_norm, use_running_average=not train,
                             momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=self.dtype)
    pool = functools.partial(ops.max_pool, window=(2, 2), strides=(2, 2))
    x = jnp.asarray(x, self.dtype)
    x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    stem = ops.valid_conv(self.stem_filters, (7, 7), (2, 2), name="stem_conv")
    x = stem(x)
    x = nn.relu(norm(name="stem_norm")(x))
    x = ops.max_pool(x, (3, 3), (2, 2))
    levels = [x]  # The feature levels, finest first: the stem's, then each stage's.
    for stage, (filters, blocks) in enumerate(zip(self.stage_filters, self.stage_blocks)):
      for block in range(blocks):
        x = BottleneckBlock(tuple(filters), downsample=block == 0, conv=ops.conv,
                            pointwise=ops.pointwise, pool=pool, norm=norm,
                            name=f"stage{stage + 1}_block{block + 1}")(x)
      levels.append(x)
    if self.head == "heatmap":
      finer = levels[-self.heatmap_stages:-1][::-1]  # Coarse to fine after the last.
      return heads.HeatmapHead(self.heatmap_size, self.heatmap_margin, dtype=self.dtype,
                               num_keypoints=keypoints.get(self.layout).num_keypoints,
                               kernel_init=init, name="heatmap")(x, finer)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for i, (size, rate) in enumerate(zip(self.dense_sizes, self.dropout_rates)):
      x = nn.relu(nn.Dense(size, dtype=self.dtype, kernel_init=init, name=f"dense{i + 1}")(x))
      x = nn.Dropout(rate, deterministic=not train)(x)
    coords = keypoints.get(self.layout).num_coords
    x = nn.Dense(coords, dtype=self.dtype, kernel_init=init, name="output")(x)
    x = OUTPUT_ACTIVATIONS[self.output_activation](x)
    return jnp.asarray(x, jnp.float32) * self.output_scale + self.output_offset


def compute_dtype(config):
  """The dtype the model computes in: bfloat16 with ``config.half_precision``, else float32."""
  return jnp.bfloat16 if config.half_precision else jnp.float32


def create_model(config, dtype=jnp.float32) -> ResNet:
  """Builds the ResNet that ``config.model`` describes (``training.config.check_config``
  refuses a config it cannot build)."""
  m = config.model
  return ResNet(
      stage_filters=tuple(tuple(f) for f in m.stage_filters),
      stage_blocks=tuple(m.stage_blocks),
      stem_filters=m.stem_filters,
      dense_sizes=tuple(m.dense_sizes),
      dropout_rates=tuple(m.dropout_rates),
      head=m.head,
      heatmap_size=m.heatmap_size,
      heatmap_margin=m.heatmap_margin,
      heatmap_stages=m.heatmap_stages,
      output_activation=m.output_activation,
      output_scale=m.output_scale,
      output_offset=m.output_offset,
      conv_bias=m.conv_bias,
      kernel_init=m.kernel_init,
      fast_ops=m.fast_ops,
      layout=keypoints.get(config.data.keypoints).name,
      dtype=dtype)


def parameter_count(model: nn.Module) -> int:
  """The trainable parameters of ``model`` (from their shapes alone: nothing is computed)."""
  size = keypoints.IMAGE_SIZE
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 1)), train=False))
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes["params"])))

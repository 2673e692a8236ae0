"""The stem's 7x7/2 convolution on grey faces, timed in the ways it can be written.

  python -m experiments.stem_variants                 # batch 16, 32 and 64; 7 rounds

op_profile's table puts the stem first where facekp_jax loses to Keras (its kernel gradient
and the im2col patches it gathers). The variants, each the same function and kernel gradient
(checked against the first before timing):

- ``im2col``: the package's (``model/ops/conv.py``): XLA's convolution forward, the kernel
  gradient as one patches^T @ gradient product;
- ``xla``: XLA's convolution and its own gradient;
- ``space_to_depth``: each 2x2 block of pixels one pixel of 4 channels, the kernel zero-padded
  to 8x8 and regrouped to 4x4x4, an unstrided convolution (the TPU ResNet stem's trick), with
  XLA's gradient.

One JSON line per batch and variant: the median and range over ``--rounds`` rounds (variants
alternate within a round) of the ms of one forward and kernel-gradient call.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax import lax

from facekp_jax import cli
from facekp_jax.model.ops import conv


def space_to_depth_conv(x, kernel, strides):
  """A 'VALID' strided convolution as an unstrided one over blocks of strides' size."""
  (kh, kw), (s, t) = kernel.shape[:2], strides
  n, h, w, c = x.shape
  ho, wo = (h - kh) // s + 1, (w - kw) // t + 1
  bh, bw = -(-kh // s), -(-kw // t)  # The kernel's size in blocks.
  rows, cols = (ho - 1 + bh) * s, (wo - 1 + bw) * t  # The input the blocks cover.
  x = lax.pad(x[:, :rows, :cols], jnp.zeros((), x.dtype),
              ((0, 0, 0), (0, max(0, rows - h), 0), (0, max(0, cols - w), 0), (0, 0, 0)))
  x = x.reshape(n, rows // s, s, cols // t, t, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(n, rows // s, cols // t, s * t * c)
  features = kernel.shape[-1]
  kernel = jnp.pad(kernel, ((0, bh * s - kh), (0, bw * t - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(bh, s, bw, t, c, features).transpose(0, 2, 1, 3, 4, 5)
  return conv._conv(x, kernel.reshape(bh, bw, s * t * c, features), (1, 1))


VARIANTS = {"im2col": conv.conv_valid, "xla": conv._conv, "space_to_depth": space_to_depth_conv}


def time_batch(batch: int, rounds: int, calls: int = 5) -> list[dict]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, 102, 102, 1)), jnp.float32)  # 96 + the stem's padding.
  kernel = jnp.asarray(rng.normal(size=(7, 7, 1, 64)) * 0.1, jnp.float32)
  weights = jnp.asarray(rng.normal(size=(batch, 48, 48, 64)), jnp.float32)
  fns = {name: jax.jit(jax.value_and_grad(
      lambda k, x, w, f=f: jnp.sum(f(x, k, (2, 2)) * w))) for name, f in VARIANTS.items()}
  reference = fns["im2col"](kernel, x, weights)[1]
  for name, fn in fns.items():
    np.testing.assert_allclose(fn(kernel, x, weights)[1], reference, rtol=1e-3, atol=1e-2,
                               err_msg=name)
  ms = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(fn(kernel, x, weights))
      ms[name].append(1e3 * (time.perf_counter() - t0) / calls)
  return [{"batch": batch, "variant": name, "ms_median": round(statistics.median(v), 2),
           "ms_range": [round(min(v), 2), round(max(v), 2)], "rounds": rounds}
          for name, v in ms.items()]


def main(argv=None) -> None:
  fv = cli.command_flags()
  flags.DEFINE_list("batch", ["16", "32", "64"], "batch sizes", flag_values=fv)
  flags.DEFINE_integer("rounds", 7, "rounds; each times every variant once", flag_values=fv)
  cli.parse(fv, "python -m experiments.stem_variants", __doc__, argv)
  for batch in fv.batch:
    for record in time_batch(int(batch), fv.rounds):
      print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()

"""Training input kept on the devices: upload the training split once, gather and augment there.

With ``config.input_on_device`` the host only draws each step's indices and
augmentation plan (a few numbers per face, from the very generators the host
pipeline uses), and one compiled call runs ``config.steps_per_call`` training
steps (``lax.scan``): gather the batch from the device copy of the training
split, apply the plan (``augment.apply_plan`` over ``jax.numpy``: the host pipeline's own
code), take the step. The batches are the host pipeline's, so the two modes train the same
model; this one skips the per-step host work and transfers that dominate on accelerators.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from facekp_jax.core import sharding
from facekp_jax.core.faces import FIELDS, Faces
from facekp_jax.data import augment


def upload(faces: Faces, mesh) -> dict:
  """The training split as arrays (``images``, ``targets``, ``mask``) replicated on every device
  of ``mesh`` (all processes)."""
  rep = sharding.replicated(mesh)
  return {name: jax.make_array_from_callback(x.shape, rep, lambda index, x=x: x[index])
          for name, x in ((f, getattr(faces, f)) for f in FIELDS)}


def make_train_steps(train_step, augment_config, layout):
  """(state, dataset, indices (K, B), plans (K, B)) -> (state, metrics stacked over K steps).

  ``train_step(state, batch)`` takes the batch as ``{"images", "targets", "mask"}``; ``layout``
  is the faces' ``core.keypoints.Layout`` (its flip twins).
  """

  def steps(state, dataset: dict, indices, plans):
    def one(state, xs):
      idx, plan = xs
      batch = augment.apply_plan(Faces(*(dataset[f][idx] for f in FIELDS)), plan,
                                 augment_config, layout, xp=jnp)
      return train_step(state, {f: getattr(batch, f) for f in FIELDS})

    # Fully unrolled: XLA:CPU ran the rolled loop's body 5x slower (35 vs 169 img/s, batch 32);
    # compile time grows with steps_per_call instead.
    return lax.scan(one, state, (indices, plans), unroll=True)

  return steps

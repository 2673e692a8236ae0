"""One data-parallel device mesh: replicated state, batches split on their first axis.

With several processes the mesh spans all their devices, ordered by process, so process ``p``
holds rows ``[p * B / P, (p + 1) * B / P)`` of every global batch of ``B`` rows over ``P``
processes: each process feeds exactly that contiguous share (``process_slice``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def process_rows(n: int) -> slice:
  """This process's contiguous share of ``n`` global batch rows."""
  per = n // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def process_slice(x: np.ndarray) -> np.ndarray:
  """This process's contiguous share of a global batch."""
  return x[process_rows(len(x))]


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices (of all processes) along the data axis, process by process."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(sorted(devices, key=lambda d: d.process_index)), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def steps_sharded(mesh: Mesh) -> NamedSharding:
  """Stacked per-step inputs (steps, batch, ...): split on the batch axis."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def to_global(batch, mesh: Mesh, sharded=batch_sharded):
  """Host numpy batch (this process's rows) -> global arrays sharded by ``sharded(mesh)``.

  The global batch has ``process_count`` times this process's rows, in process order.
  """
  sharding = sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def topology() -> str:
  """One line describing processes and devices, for the log."""
  d = jax.devices()
  return (f"process {jax.process_index()}/{jax.process_count()}, {jax.local_device_count()} local "
          f"/ {len(d)} global devices ({d[0].platform}: {d[0].device_kind}), jax {jax.__version__}")

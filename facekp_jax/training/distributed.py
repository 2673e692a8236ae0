"""Multi-process start: ``jax.distributed.initialize`` from flags or from the cluster.

One process drives every device of its host, so one machine with several GPUs needs none of
this (``off``). Several hosts run the same command once per host (or once per GPU) and meet at
process 0's coordinator: ``auto`` takes the coordinator address, process count and process id
from the environment JAX recognises (Cloud TPU, SLURM, Open MPI, Kubernetes); ``manual`` takes
them from flags. Afterwards the device mesh spans every process's devices, each process feeds
its share of each global batch, and only process 0 writes the workdir's files.
"""

from __future__ import annotations

import os
import secrets

import jax
import numpy as np
from jax.experimental import multihost_utils

from facekp_jax.core.errors import WorkdirError

MODES = ("off", "auto", "manual")
_FLAGS = ("coordinator_address", "num_processes", "process_id")


class DistributedError(ValueError):
  """A multi-process setting that cannot work, described in one line."""


def initialize(mode: str = "off", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_seconds: int = 300) -> None:
  """Joins this process to the others; must come before anything touches a device.

  Args:
    mode: ``off`` (one process, nothing to do), ``auto`` (detect; given values override the
      detected ones) or ``manual`` (all three values given).
    coordinator_address: ``host:port`` of process 0, the same in every process.
    num_processes: how many processes take part.
    process_id: this process's index, ``0 .. num_processes - 1``.
    timeout_seconds: how long to wait for the others to arrive.

  Raises:
    DistributedError: contradictory or missing settings, no cluster found by ``auto``, or a
      coordinator that cannot be reached.
  """
  values = dict(zip(_FLAGS, (coordinator_address, num_processes, process_id)))
  given = [f"--{k}" for k, v in values.items() if v is not None]
  if mode not in MODES:
    raise DistributedError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
  if mode == "off":
    if given:
      raise DistributedError(f"{', '.join(given)}: only with --distributed=manual (or auto)")
    return
  if mode == "manual":
    missing = [f"--{k}" for k, v in values.items() if v is None]
    if missing:
      raise DistributedError(f"--distributed=manual needs {', '.join(missing)}")
    if coordinator_address.rpartition(":")[0] == "":
      raise DistributedError(
          f"--coordinator_address must be HOST:PORT, got {coordinator_address!r}")
    if not 0 <= process_id < num_processes:
      raise DistributedError(f"--process_id must be in [0, {num_processes}), got {process_id}")
  # Cross-process collectives on CPU hosts (GPUs and TPUs bring their own); gloo is the
  # default of recent JAX, set here for older ones.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, initialization_timeout=timeout_seconds,
        # manual: a SLURM or MPI environment around the run must not change what was asked.
        cluster_detection_method="deactivate" if mode == "manual" else None)
  except ValueError as e:
    if mode == "auto" and "defined" in str(e):  # Nothing detected: no address, count or id.
      raise DistributedError(
          "--distributed=auto found no cluster (Cloud TPU, SLURM, Open MPI, Kubernetes) to take "
          "the coordinator, process count and process id from; use --distributed=manual "
          "--coordinator_address=HOST:PORT --num_processes=N --process_id=I") from None
    raise DistributedError(f"jax.distributed.initialize: {e}") from None
  except jax.errors.JaxRuntimeError as e:
    where = coordinator_address or "the detected coordinator"
    detail = " ".join(str(e).split())[:300]
    raise DistributedError(f"could not join the other processes at {where}: {detail}") from None


def is_main_process() -> bool:
  """Process 0 writes the workdir's files; the others only compute."""
  return jax.process_index() == 0


def check_shared_folder(folder: str) -> None:
  """Makes sure every process sees the folder process 0 writes into (checkpoints need it).

  Process 0 writes a marker file; every process looks for it. Called on every process after
  process 0 created ``folder``; a no-op with one process.

  Raises:
    WorkdirError: on every process, naming those that do not see the marker.
  """
  if jax.process_count() == 1:
    return
  nonce = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
  marker = os.path.join(folder, f".shared-check-{nonce}")
  if is_main_process():
    with open(marker, "w"):
      pass
  multihost_utils.sync_global_devices("facekp_jax: shared workdir marker written")
  seen = np.asarray(multihost_utils.process_allgather(np.int32(os.path.exists(marker))))
  if is_main_process():
    os.remove(marker)
  blind = [i for i, s in enumerate(seen.reshape(-1)) if not s]
  if blind:
    raise WorkdirError(
        f"{folder}: process(es) {', '.join(map(str, blind))} do not see the files of "
        "process 0; all processes must use the same folder on storage they share")

"""Keeps freed host memory for reuse, so XLA:CPU's per-step buffers cost no page faults.

XLA's CPU runtime allocates each execution's temporary buffers (about 250 MB for
one training step of the seed model at batch 32) with ``posix_memalign`` from
its worker threads and frees them when the step ends. glibc serves such large
blocks from fresh ``mmap`` regions and returns them at ``free``, so every step
faults in and zeroes a quarter of a gigabyte again: on a 2-core machine that was
~60,000 page faults and ~110 ms of kernel time per step. With one malloc arena,
no ``mmap`` for large blocks and no trimming, the same memory is reused from step
to step (0 faults after the first steps).

The settings must be made before JAX starts its CPU client (threads that already
have their own malloc arena keep it): each command applies them where its run starts
(``main``, ``evaluate``, ``predict``, ``export``, ``experiments/benchmark.py``), not on import.
Set ``FACEKP_JAX_SYSTEM_MALLOC=1`` to leave glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

OPT_OUT_VARIABLE = "FACEKP_JAX_SYSTEM_MALLOC"


def reuse_freed_memory() -> bool:
  """Tunes glibc malloc to keep and reuse large freed blocks; True when applied."""
  if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT_VARIABLE, "") not in ("", "0"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # Not glibc (e.g. musl): leave it.
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  applied = [mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))]
  return all(applied)

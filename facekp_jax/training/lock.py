"""One training per workdir: an exclusive OS file lock held for the training's whole life.

``acquire(workdir)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``workdir/.lock`` and
writes the holder (pid, host, start time) into it; a second training on the same
workdir finds the lock taken and stops at once with one line naming the holder,
having written nothing. The kernel releases the lock when the holder's process
ends in any way (SIGKILL included), so a stale ``.lock`` file never blocks the next
run: only a live holder does. With several processes, process 0 takes the lock and
the others learn its verdict (a broadcast), so they stop together. Evaluation and
prediction read a workdir without it, beside a running training.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket

import jax
import numpy as np

from facekp_jax.core.errors import WorkdirError

LOCK_NAME = ".lock"


class WorkdirBusy(RuntimeError):
  """Another live training holds the workdir; the message names it."""


class Lock:
  """A held workdir lock, a context manager; ``release`` (or the process's end) lets it go."""

  def __init__(self, fd: int | None):
    self._fd = fd

  def __enter__(self) -> Lock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _holder(fd: int) -> str:
  """The holder written into the lock file, in words (whatever could be read)."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    return f"pid {info['pid']} on {info['host']}, started {info['started']}"
  except (OSError, ValueError, KeyError, UnicodeDecodeError):
    return "a process that has not written its name yet"


def _try_lock(workdir: str) -> tuple[int | None, str]:
  """(fd of the held lock, "") or (None, the holder's description).

  The lock is a run's first write: where it fails (a full or read-only disk, a ``.lock``
  that is a folder), what it made is taken back (the lock file, the workdir folder) and the
  failure is ``WorkdirError``'s one line."""
  path = os.path.join(workdir, LOCK_NAME)
  made = [p for p in (workdir, path) if not os.path.lexists(p)]
  fd = None
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd)
      os.close(fd)
      return None, holder
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd, ""
  except OSError as e:
    if fd is not None:
      os.close(fd)
    for p in reversed(made):
      with contextlib.suppress(OSError):
        os.remove(p) if p == path else os.rmdir(p)
    raise WorkdirError(f"workdir {workdir}: cannot take its lock {path} "
                       f"({e.strerror or e}); nothing was written: free space, mend the "
                       "disk or its permissions, or use another --workdir") from None


def acquire(workdir: str) -> Lock:
  """Takes the workdir's lock (process 0), or raises ``WorkdirBusy`` on every process."""
  fd, holder = _try_lock(workdir) if jax.process_index() == 0 else (None, "")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    busy = multihost_utils.broadcast_one_to_all(np.int32(jax.process_index() == 0 and fd is None))
    if int(busy):
      raise WorkdirBusy(f"workdir {workdir} is in use by another training (held by process 0's "
                        "lock); wait for it to finish or use another --workdir")
  if jax.process_index() == 0 and fd is None:
    raise WorkdirBusy(f"workdir {workdir} is in use by another training ({holder}); wait for "
                      "it to finish, stop it, or use another --workdir")
  return Lock(fd)

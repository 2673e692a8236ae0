"""SIGTERM / Ctrl-C become a request to checkpoint and stop at the next step boundary."""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from facekp_jax.core import errors


class Interrupted(Exception):
  """Raised by the loop after it saved a checkpoint in answer to a signal."""

  def __init__(self, signum: int, step: int):
    self.signum = signum
    self.step = step
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                     f"{errors.RESUME}")


class StopRequest:
  """Context manager: while active, SIGTERM and SIGINT set ``signum`` instead of killing.

  A second signal of the same kind falls through to the previous handler, so a
  stuck run can still be stopped hard.

  With several processes, a signal may reach them at different steps (or reach only
  one), yet they must all save the same step and stop together: ``stop_after`` then
  takes a vote (an all-gather of each process's signal) every ``vote_every`` steps
  and at each epoch's end, and every process stops if any one was signalled.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, vote_every: int = 8):
    self.signum: int | None = None
    self.vote_every = vote_every
    self._previous = {}

  def stop_after(self, step: int, taken: int = 1, boundary: bool = False) -> bool:
    """Whether to save and stop after ``step`` (reached by ``taken`` steps since the last call).

    Every process must make the same calls (same steps, same ``boundary``): with several
    processes a call on a vote step is a collective.

    Args:
      step: the step just reached.
      taken: steps since the previous call (several steps per call skip steps).
      boundary: an epoch's end, where the processes always vote.
    """
    if jax.process_count() == 1:
      return self.signum is not None
    if not boundary and step // self.vote_every == (step - taken) // self.vote_every:
      return False
    votes = multihost_utils.process_allgather(np.int32(self.signum or 0))
    signum = int(np.max(votes))
    if signum:
      self.signum = signum
    return bool(signum)

  def _handle(self, signum, frame):
    if self.signum is not None:
      previous = self._previous.get(signum)
      if callable(previous):
        previous(signum, frame)
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is threading.main_thread():
      for s in self._SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()

"""SIGTERM / Ctrl-C become a request to checkpoint and stop at the next step boundary."""

from __future__ import annotations

import signal
import threading


class Interrupted(Exception):
  """Raised by the loop after it saved a checkpoint in answer to a signal."""

  def __init__(self, signum: int, step: int):
    self.signum = signum
    self.step = step
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                     "run the same command again to resume")


class StopRequest:
  """Context manager: while active, SIGTERM and SIGINT set ``signum`` instead of killing.

  A second signal of the same kind falls through to the previous handler, so a
  stuck run can still be stopped hard.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

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

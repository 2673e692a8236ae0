"""A training's workdir: the checks before a run, its writer, disk failures, what a run wrote.

``check_workdir`` refuses a workdir before a run writes anything; ``RunWriter`` owns a run's
files (through ``core.files``' atomic writer); ``disk_failures_end_the_run`` turns a full disk
into one line; ``trained_keypoints`` and ``config_differences`` read what a run wrote. Plots are
``core.plots``'s, figures ``core.metrics``'s.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re

import ml_collections
import numpy as np

from facekp_jax.core import errors, files, keypoints, plots
from facekp_jax.core.errors import WorkdirError
from facekp_jax.training import config as config_lib
from facekp_jax.training import lock


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(map(tuple, v)) if _is_nested_seq(v) else (
          tuple(v) if isinstance(v, (list, tuple)) else v)
  return out


def _is_nested_seq(v) -> bool:
  return isinstance(v, (list, tuple)) and any(isinstance(x, (list, tuple)) for x in v)


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Fields whose values differ between a saved config (JSON) and ``config``."""
  had, new = _flatten(saved), _flatten(json.loads(config.to_json()))
  # Fields the saved run predates mean what the project did before them (``training.config``);
  # others it does not have were added later without changing anything: not a difference.
  old = {k: v for k, v in _flatten(config_lib.upgrade(saved)).items()
         if k in had or k in new}
  return [f"{k}: {old[k]!r} -> {new.get(k, '<absent>')!r}"
          for k in sorted(old) if old[k] != new.get(k, object())]


# What a run keeps in its workdir: name -> whether it is a folder.
RUN_ENTRIES = {"config.json": False, "trained_keypoints.json": False, "metrics.jsonl": False,
               "results.json": False, "checkpoints": True, "tensorboard": True,
               lock.LOCK_NAME: False, **{name: False for name in plots.RUN_PLOTS}}


def check_workdir(workdir: str, config, allow_config_change: bool = False) -> None:
  """Refuses a workdir that cannot be written, or that holds a run of another config.

  Raises:
    WorkdirError: with a one-line description; nothing is created or written.
  """
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    if os.path.islink(existing):
      raise WorkdirError(f"workdir {workdir}: {existing} is a symbolic link to "
                         f"{os.readlink(existing)}, which does not exist; make that folder, "
                         "or use another --workdir")
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"workdir {workdir}: {existing} is not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(f"workdir {workdir}: {existing} is not writable")
  for name, folder in RUN_ENTRIES.items():
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and (os.path.isdir(path) != folder or not os.path.exists(path)):
      what = ("a dangling symbolic link" if not os.path.exists(path) else
              "a folder" if os.path.isdir(path) else "a file")
      raise WorkdirError(f"workdir {workdir}: {path} is {what}, where a run keeps "
                         f"{'its folder' if folder else 'a file'}; move it away, or use "
                         "another --workdir")
  if os.path.exists(os.path.join(workdir, "config.json")) and not allow_config_change:
    diffs = config_differences(config_lib.saved_config(workdir), config)
    if diffs:
      raise WorkdirError(f"workdir {workdir} holds a run with another config ({'; '.join(diffs)}); "
                         "use a new --workdir, or --allow_config_change to continue anyway")


TRAINED_KEYPOINTS = "trained_keypoints.json"


def trained_keypoints(workdir: str, layout: keypoints.Layout) -> np.ndarray:
  """(2K,) 1 for the coordinates of ``layout``'s keypoints the run's training split labelled.

  Workdirs written before the record existed count every keypoint as trained.
  """
  path = os.path.join(workdir, TRAINED_KEYPOINTS)
  if not os.path.exists(path):
    return np.ones(layout.num_coords, np.float32)
  try:
    with open(path) as f:
      names = set(json.load(f)["trained"])
  except (OSError, ValueError, KeyError, TypeError) as e:  # TypeError: JSON of another shape.
    raise WorkdirError(f"workdir {workdir}: cannot read {TRAINED_KEYPOINTS} "
                       f"({getattr(e, 'strerror', None) or e}); it is damaged: restore it, or "
                       "delete it to count every keypoint as trained") from None
  return np.repeat([float(n in names) for n in layout.names], 2).astype(np.float32)


def mean_shape(workdir: str, layout: keypoints.Layout) -> np.ndarray | None:
  """(K, 2) the training split's mean keypoints in the frame (``TRAINED_KEYPOINTS``' "mean";
  NaN for keypoints never labelled), or None where the run did not record it."""
  path = os.path.join(workdir, TRAINED_KEYPOINTS)
  try:
    with open(path) as f:
      mean = json.load(f).get("mean")
  except (OSError, ValueError, AttributeError):  # AttributeError: JSON of another shape.
    return None
  if not isinstance(mean, dict):
    return None
  return np.array([mean.get(n) or (np.nan, np.nan) for n in layout.names], np.float64)


# Errors of the storage itself (full, failing, read-only, over quota), not of the program.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS})


# TensorStore (Orbax's array writer) reports an OS error inside a ValueError's message.
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")
_TENSORSTORE_FILE = re.compile(r'file "([^"]+)"')


def disk_failure(error: BaseException) -> OSError | None:
  """The storage error (``DISK_ERRNOS``) behind ``error``, looking through the exceptions it
  was raised from (Orbax wraps its writers' errors) and TensorStore's messages, or None."""
  for e in errors.chain(error):
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
      return e
    code = _TENSORSTORE_OS_ERROR.search(str(e))
    if code and int(code.group(1)) in DISK_ERRNOS:
      path = _TENSORSTORE_FILE.search(str(e))
      return OSError(int(code.group(1)), os.strerror(int(code.group(1))),
                     path.group(1) if path else None)
  return None


class LibraryNoise(logging.Filter):
  """Drops the WARNING and ERROR records that Orbax (its writer threads: each failing write
  with a traceback, ~280 lines) and asyncio (its tasks' unretrieved errors) log of a failure
  the run has handled, before and after its one line. ``is_noise(error)`` says which."""

  def is_noise(self, error: BaseException) -> bool:
    raise NotImplementedError

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.WARNING or not (
        record.name == "asyncio" or f"{os.sep}orbax{os.sep}" in record.pathname):
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not ((error is not None and self.is_noise(error))
                or self.is_noise(ValueError(record.getMessage())))


class _OrbaxDiskNoise(LibraryNoise):
  """The records of a disk failure (``disk_failure``)."""

  def is_noise(self, error: BaseException) -> bool:
    return disk_failure(error) is not None


def log_handlers() -> list[logging.Handler]:
  """The handlers every record reaches (absl's is the root logger's): a filter on a logger
  would miss the records of other loggers (asyncio's) that propagate to them."""
  return [h for name in ("", "absl") for h in logging.getLogger(name).handlers]


@contextlib.contextmanager
def disk_failures_end_the_run(workdir: str):
  """Turns a write that fails on a full or failing disk (``disk_failure``) into one
  ``WorkdirError`` line that says how to go on; other errors pass unchanged.

  Every writer of a run leaves the last good state behind when it fails (``files.atomic_write``
  renames complete files only, ``RunWriter.append_metrics`` takes back a partial line, Orbax
  renames complete checkpoints only), so running the same command again resumes. Orbax's own
  error records of the disk failure (``_OrbaxDiskNoise``) stay out of the log meanwhile.
  """
  noise, handlers = _OrbaxDiskNoise(), log_handlers()
  for handler in handlers:
    handler.addFilter(noise)
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    failure = disk_failure(e)
    if failure is None:
      for handler in handlers:
        handler.removeFilter(noise)
      raise
    # The filter stays: Orbax's threads go on logging the failure until the process ends.
    where = f" {failure.filename}" if failure.filename else ""
    raise WorkdirError(
        f"workdir {workdir}: a write{where} failed ({failure.strerror or failure}); the last "
        "complete checkpoint and metrics.jsonl are intact: free space (or mend the disk) and "
        f"{errors.RESUME}") from e
  for handler in handlers:
    handler.removeFilter(noise)


class RunWriter:
  """Owns the files of a workdir; a no-op on processes other than the main one."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)

  def _path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def write_config(self, config) -> None:
    if self.enabled:
      files.atomic_write(self._path("config.json"),
                         lambda f: f.write(config.to_json(indent=2).encode()))

  def write_trained_keypoints(self, faces, layout: keypoints.Layout) -> None:
    """Records which of ``layout``'s keypoints the training split labels, and their mean
    position in the frame (``TRAINED_KEYPOINTS``)."""
    if self.enabled:
      mask = np.asarray(faces.mask).reshape(-1, layout.num_keypoints, 2)
      counts = mask.min(axis=2).sum(axis=0)
      sums = (np.asarray(faces.targets, np.float64).reshape(mask.shape) * mask).sum(axis=0)
      mean = sums / np.maximum(mask.sum(axis=0), 1)
      files.write_json(self._path(TRAINED_KEYPOINTS), {
          "layout": layout.name,
          "trained": [n for n, c in zip(layout.names, counts) if c > 0],
          "labelled_faces": {n: int(c) for n, c in zip(layout.names, counts)},
          "mean": {n: [round(float(x), 3), round(float(y), 3)]
                   for n, c, (x, y) in zip(layout.names, counts, mean) if c > 0}})

  def rewrite_metrics(self, history: list[dict]) -> None:
    """Makes metrics.jsonl hold exactly ``history`` (a resumed run's checkpointed epochs)."""
    if self.enabled:
      text = "".join(json.dumps(r) + "\n" for r in history)
      files.atomic_write(self._path("metrics.jsonl"), lambda f: f.write(text.encode()))

  def append_metrics(self, record: dict) -> None:
    """Appends one epoch to metrics.jsonl and to the TensorBoard event file."""
    if not self.enabled:
      return
    with open(self._path("metrics.jsonl"), "a") as f:
      size = f.tell()
      try:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
      except OSError:  # A full or failing disk: no half line stays behind.
        f.truncate(size)
        raise
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(self._path("tensorboard"), flush_secs=30)
    for key in ("train_loss", "train_rmse", "val_rmse", "val_nme"):
      if key in record:  # No validation figures in a final fit on every face.
        self._tb.add_scalar(key, record[key], global_step=record["step"])
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def write_results(self, results: dict) -> None:
    if self.enabled:
      files.write_json(self._path("results.json"), results)

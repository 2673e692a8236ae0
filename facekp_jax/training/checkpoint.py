"""Orbax in one place: a run's checkpoints, their retention, and restore-or-init.

A checkpoint holds the whole ``TrainState`` (params, batch statistics, optimizer
state, step, RNG) and a small JSON ``progress`` item (the epoch's running loss
sums and the metric history), so a resumed run continues the very same
computation. Orbax writes each checkpoint into a temporary folder and renames
it into place when complete, so a killed save is never picked up on restart.
Retention: the last ``keep`` checkpoints plus the best by validation RMSE. ``restore_trained``
reads a finished or running workdir's best or latest state, read only (evaluate, predict, export).

A damaged checkpoint (a file cut short or garbled: ``damage``) is passed over for the newest
one that reads whole: a resumed training (``Checkpointer.resume``) says so in one line and
moves the damaged ones into ``workdir/damaged_checkpoints`` (they would shadow the steps it is
about to save again); a reader says so and reads the next. A checkpoint deleted under a
reader by the training's retention is looked for again.

With several processes every process creates the ``Checkpointer`` and calls ``save``,
``restore``, ``wait`` and ``close`` at the same points: Orbax synchronises them, process 0
(its primary host) creates folders, writes ``progress`` and renames a finished checkpoint into
place, and every process must see the same ``workdir`` (shared storage; checked on creation).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from facekp_jax.core import errors, sharding
from facekp_jax.core.errors import WorkdirError
from facekp_jax.training import distributed
from facekp_jax.training import workdir as workdir_lib

_BEST_METRIC = "val_rmse"
_READ_TRIES = 5  # Times a reader lists the checkpoints again after one vanished under it.
# What Orbax raises where a step it listed is deleted before it reads the step's metadata:
# FileNotFoundError, or NotADirectoryError where the step was there when asked whether it
# exists and gone when asked whether it is a directory.
_DELETED_WHILE_LISTED = (FileNotFoundError, NotADirectoryError)
# Times a training makes its manager again when Orbax's cleanup of a half-written step finds
# files still appearing: a save that failed in this process (a notebook's earlier call) leaves
# its writer threads finishing for a moment.
_CLEANUP_TRIES = 5
CHECKPOINTS = ("best", "latest")


def _read_only_notes(record: logging.LogRecord) -> bool:
  """False for Orbax's two warnings that a read-only manager is read-only (what we asked)."""
  message = record.getMessage()
  return not ("read_only=True" in message or "read only" in message)


class Checkpointer:
  """Creates, saves and restores the checkpoints under ``workdir/checkpoints``.

  ``read_only=True`` (evaluation, prediction) creates, deletes and cleans up nothing, so it
  is safe beside a run that is still writing checkpoints into the same workdir.
  """

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=max(1, keep)),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m[_BEST_METRIC], reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = None
    # Steps Orbax cannot even list (a file where a step's folder goes, a record of another
    # shape): a training sets them aside, a reader passes them over (``passed_over``).
    self.passed_over = _unlistable_steps(self.directory)
    if self.passed_over and not read_only and jax.process_index() == 0:
      logging.getLogger("absl").warning(
          "workdir %s: checkpoints/%s is not a checkpoint folder Orbax can read (moved into %s)",
          workdir, ", ".join(map(str, self.passed_over)), self.set_aside(self.passed_over))
    absl_logger = logging.getLogger("absl")  # Orbax logs through absl.logging.
    absl_logger.addFilter(_read_only_notes)
    try:
      options = ocp.CheckpointManagerOptions(
          preservation_policy=policy, create=not read_only, best_fn=lambda m: m[_BEST_METRIC],
          best_mode="min", cleanup_tmp_directories=not read_only, read_only=read_only,
          step_name_format=_listable_steps() if self.passed_over else None)
      for attempt in range(_CLEANUP_TRIES):
        try:
          self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                item_names=("state", "progress"))
          break
        except OSError as e:  # Its cleanup of a half-written step raced that step's writers.
          if e.errno != errno.ENOTEMPTY or attempt == _CLEANUP_TRIES - 1:
            raise
          time.sleep(1.0)
    finally:
      absl_logger.removeFilter(_read_only_notes)
    if not read_only:
      distributed.check_shared_folder(self.directory)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def save(self, state, progress: dict, metrics: dict | None = None) -> None:
    """Saves ``state`` at its step (asynchronously; ``wait`` makes it durable)."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
                       metrics=metrics, force=True)

  def restore(self, state_like, step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, progress) at ``step`` (default: latest) with ``state_like``'s shardings.

    Leaves without a sharding (a ``jax.eval_shape`` target) come back replicated over all
    devices, whatever processes and devices saved them: a run trained on several hosts
    restores on one.
    """
    step = self.latest_step() if step is None else step
    replicated = sharding.replicated(sharding.make_mesh())

    def abstract_leaf(x):
      leaf = ocp.utils.to_shape_dtype_struct(x)
      if getattr(leaf, "sharding", None) is None:
        leaf = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated)
      return leaf

    abstract = jax.tree.map(abstract_leaf, state_like)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
    if not (isinstance(restored.progress, dict) and isinstance(
        restored.progress.get("history"), list)):
      raise Damaged(f"step {step}: its progress record is not the loop's")
    return restored.state, restored.progress

  def recorded_shapes(self, step: int) -> dict | None:
    """The state's shapes that checkpoint ``step`` records (``_shapes``), or None where its
    records cannot be read (they are damaged)."""
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_read_only_notes)
    try:
      manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "progress": ocp.JsonCheckpointHandler()})
      try:
        tree = manager.item_metadata(step)["state"]
      finally:
        manager.close()
      return _shapes(tree) if tree is not None else None
    except Exception:  # pylint: disable=broad-except  # Unreadable records: damage.
      return None
    finally:
      absl_logger.removeFilter(_read_only_notes)

  def steps(self) -> list[int]:
    """The steps on disk now, newest first (re-read: a training beside may have moved on)."""
    self._manager.reload()
    return sorted(self._manager.all_steps(), reverse=True)

  def restore_intact(self, state_like, steps: list[int]) -> tuple[Any, dict, int, list[int]]:
    """Restores the first of ``steps`` that reads whole: ``(state, progress, step, damaged)``,
    ``damaged`` the steps before it that are damaged: their records unreadable, or a read that
    fails as a damaged file does (``damage``). A step that vanishes while it is read (a
    training beside deleted it) is skipped; one whose records are another model's raises.

    Raises:
      CheckpointDamaged: none of ``steps`` reads whole (``damaged`` lists them).
      CheckpointMisfit: a checkpoint that records another model than ``state_like``.
    """
    damaged, target = [], _shapes(state_like)
    for step in steps:
      # Another model's checkpoint is told by its records, before any array is read: a read
      # that fails midway leaves TensorStore's reads in flight, printing tracebacks.
      recorded = self.recorded_shapes(step)
      difference = recorded is not None and _difference(recorded, target)
      if difference:
        raise CheckpointMisfit(f"step {step}: {difference}")
      try:
        state, progress = self.restore(state_like, step)
        # One deleted while being read looked damaged: it is gone now.
        damaged = [d for d in damaged if os.path.isdir(os.path.join(self.directory, str(d)))]
        return state, progress, step, damaged
      except Exception as e:  # pylint: disable=broad-except
        _quiet_failed_reads()
        if not os.path.isdir(os.path.join(self.directory, str(step))):
          continue  # Deleted under the reader by the training's retention.
        if recorded is not None and damage(e) is None:
          raise  # Records whole and of this model, yet not a damaged file's error: not damage.
        damaged.append(step)
    raise CheckpointDamaged(damaged)

  def resume(self, state_like) -> tuple[Any, dict]:
    """(state, progress) of the newest checkpoint that reads whole, for a training resuming;
    damaged newer ones are set aside (``set_aside``) with one line saying so.

    Raises:
      WorkdirError: every checkpoint is damaged, or they do not fit ``state_like``.
    """
    workdir = os.path.dirname(self.directory)
    try:
      state, progress, step, damaged = self.restore_intact(state_like, self.steps())
    except (CheckpointDamaged, CheckpointMisfit, ValueError, KeyError, TypeError) as e:
      raise _unreadable(workdir, e, f"move {self.directory} away to train "
                        "afresh, or use another --workdir") from None
    if damaged:
      aside = self.set_aside(damaged)
      logging.getLogger("absl").warning(
          "workdir %s: the checkpoint at step %s is damaged (moved into %s); resuming from "
          "step %d", workdir, ", ".join(map(str, damaged)), aside, step)
    return state, progress

  def set_aside(self, steps: list[int]) -> str:
    """Moves damaged checkpoints out of the run's way, into ``workdir/damaged_checkpoints``
    (kept, not deleted); returns that folder."""
    aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      target = os.path.join(aside, str(step))
      n = 1
      while os.path.lexists(target):
        target, n = os.path.join(aside, f"{step}.{n}"), n + 1
      os.replace(os.path.join(self.directory, str(step)), target)
    if self._manager is not None:
      self._manager.reload()
    return aside

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


_RECORD = "_CHECKPOINT_METADATA"  # Orbax's record of a step (its commit time, metrics).


def has_steps(workdir: str) -> bool:
  """Whether ``workdir/checkpoints`` names any step (a run there resumes rather than starts)."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def _unlistable_steps(directory: str) -> list[int]:
  """Step names under ``directory`` that stop Orbax from listing the steps: not a folder, or a
  folder whose record is JSON of another shape than an object (Orbax passes over others)."""
  out = []
  for name in os.listdir(directory) if os.path.isdir(directory) else []:
    path = os.path.join(directory, name)
    if not name.isdigit():
      continue
    if not os.path.isdir(path):
      out.append(int(name))
      continue
    try:
      with open(os.path.join(path, _RECORD), "rb") as f:
        record = json.loads(f.read())
    except (OSError, ValueError):
      continue  # Missing or not JSON: Orbax lists the step; reading it finds the damage.
    if not isinstance(record, dict):
      out.append(int(name))
  return sorted(out)


def _listable_steps():
  """Orbax's standard step names, without the steps ``_unlistable_steps`` finds (for a reader,
  which may not move them)."""
  standard = ocp.step.standard_name_format()

  class ListableSteps(type(standard)):
    def _glob_step_paths(self, base_path):
      paths = super()._glob_step_paths(base_path)
      skip = {str(s) for s in _unlistable_steps(str(base_path))}
      return [p for p in paths if p.name not in skip]

  return ListableSteps(**{f.name: getattr(standard, f.name) for f in dataclasses.fields(standard)})


def _difference(recorded: dict, target: dict) -> str | None:
  """The first way a checkpoint's recorded shapes (``_shapes``) differ from a model's, in
  words, or None."""
  for path in sorted(set(recorded) | set(target)):
    name = ".".join(path)
    if path not in target:
      return f"it holds {name}, which config.json's model lacks"
    if path not in recorded:
      return f"it lacks {name} of config.json's model"
    if None not in (recorded[path], target[path]) and recorded[path] != target[path]:
      return f"{name} is {recorded[path]} in it, {target[path]} in config.json's model"
  return None


def _shapes(tree) -> dict:
  """{leaf path's names: shape} of a state or of a checkpoint's record of one (their paths are
  spelt differently: attributes and dict keys); None for a PRNG key's (stored as its data)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = getattr(leaf, "dtype", None)
    key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    out[tuple(re.findall(r"\w+", jax.tree_util.keystr(path)))] = None if key else tuple(
        getattr(leaf, "shape", ()))
  return out


class CheckpointMisfit(Exception):
  """A checkpoint read whole that records another model's state than the one asked for."""


class Damaged(Exception):
  """A checkpoint read whole by Orbax whose contents are not what the loop wrote."""


class CheckpointDamaged(Exception):
  """None of the checkpoints tried reads whole; ``steps`` lists the damaged ones."""

  def __init__(self, steps: list[int]):
    super().__init__(f"damaged checkpoints: {steps}")
    self.steps = steps


# What TensorStore and Orbax say of a checkpoint whose files are cut short, garbled or missing
# (as opposed to one of another model, which names shapes, structures or keys).
_DAMAGE = re.compile(r"OUT_OF_RANGE|DATA_LOSS|FAILED_PRECONDITION|Truncated|corrupt|"
                     r"Encountered error while reading|Error reading", re.IGNORECASE)


def damage(error: BaseException) -> str | None:
  """What is damaged in a checkpoint, from a restore's ``error`` and the errors it was raised
  from, in one line; None where the error is not damage (a checkpoint of another model)."""
  for e in errors.chain(error):
    message = " ".join(str(e).split())
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, Damaged,
                      UnicodeDecodeError, json.JSONDecodeError)) or _DAMAGE.search(message):
      return message[:160]
  return None


class _ReadNoise(workdir_lib.LibraryNoise):
  """The records of a read that failed and was handled (a damaged or vanished checkpoint):
  Orbax's tasks' errors surface again, as "Task exception was never retrieved" tracebacks,
  until the process ends."""

  def is_noise(self, error: BaseException) -> bool:
    return damage(error) is not None or "NOT_FOUND" in str(error)


_read_noise = None


def _late_callback(error: BaseException) -> bool:
  """Whether ``error`` is TensorStore calling back into an asyncio loop that a failed read
  already closed (its reads still in flight print it through ``sys.excepthook``)."""
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _quiet_failed_reads() -> None:
  """Installs ``_ReadNoise`` on the log handlers, once per process, for good."""
  global _read_noise
  if _read_noise is None:
    _read_noise = _ReadNoise()
    for handler in workdir_lib.log_handlers():
      handler.addFilter(_read_noise)


def quiet_late_callbacks() -> None:
  """Makes ``sys.unraisablehook`` and ``sys.excepthook`` drop ``_late_callback``'s tracebacks,
  which a failed read or write prints by the hundred (a command calls it as it starts; a
  library leaves the hooks alone)."""
  if getattr(sys.unraisablehook, "drops_late_callbacks", False):
    return
  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

  def unraisablehook(unraisable):
    if not _late_callback(unraisable.exc_value):
      previous_unraisable(unraisable)

  def excepthook(kind, error, traceback):
    if not _late_callback(error):
      previous_except(kind, error, traceback)

  unraisablehook.drops_late_callbacks = True
  sys.unraisablehook, sys.excepthook = unraisablehook, excepthook


def restore_trained(workdir: str, target_fn, which: str = "best"):
  """A workdir's ``best`` (by validation RMSE; else the latest) or ``latest`` state, read only.

  Args:
    workdir: a training workdir (it may still be training).
    target_fn: ``() -> state`` of the run's structure (``state.create_train_state``); traced
      by ``jax.eval_shape``, not run (compiling the random initialiser would take longer than
      everything else here).
    which: ``"best"`` or ``"latest"``.

  Returns:
    ``(state, step)``.

  Raises:
    WorkdirError: no checkpoint, or one that does not fit ``target_fn``'s state; one line.
  """
  if which not in CHECKPOINTS:
    raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise WorkdirError(_NO_CHECKPOINT.format(workdir=workdir))
  abstract = jax.eval_shape(target_fn)
  for _ in range(_READ_TRIES):  # A training beside may delete what was listed: list again.
    ckpt, steps = None, None
    try:
      ckpt = Checkpointer(workdir, read_only=True)  # Lists (and stats) the steps on disk.
      steps = ckpt.steps()
      if not steps:
        raise WorkdirError(_NO_CHECKPOINT.format(workdir=workdir))
      best = ckpt.best_step() if which == "best" else None
      order = ([best] if best in steps else []) + [s for s in steps if s != best]
      state, _, step, damaged = ckpt.restore_intact(abstract, order)
      damaged = sorted(set(damaged) | {s for s in ckpt.passed_over if s > step}, reverse=True)
    except WorkdirError:
      raise
    except _DELETED_WHILE_LISTED:
      continue  # Listed, then deleted before Orbax read its metadata.
    except (CheckpointDamaged, CheckpointMisfit, ValueError, KeyError, TypeError) as e:
      if steps is None or _listing(ckpt) != steps:
        continue
      raise _unreadable(workdir, e, "train again, into another --workdir or after moving "
                        "checkpoints/ away") from None
    finally:
      if ckpt is not None:
        ckpt.close()
    if damaged:
      print(f"note: workdir {workdir}: the checkpoint at step {damaged[0]} is damaged; "
            f"read step {step} instead", file=sys.stderr)
    return state, step
  raise WorkdirError(f"workdir {workdir}: its checkpoints kept changing while being read "
                     "(a training is deleting them): try again")


def _unreadable(workdir: str, error: Exception, way_on: str) -> WorkdirError:
  """The one line for checkpoints that cannot be restored: all damaged (``CheckpointDamaged``),
  or not of the model of the config (``CheckpointMisfit``, or a ValueError, KeyError or
  TypeError of Orbax's); ``way_on`` says what to do."""
  if isinstance(error, CheckpointDamaged):
    return WorkdirError(f"workdir {workdir}: every checkpoint is damaged (steps "
                        f"{', '.join(map(str, error.steps))}): {way_on}")
  return WorkdirError(f"workdir {workdir}: a checkpoint does not fit the model of config.json "
                      f"({' '.join(str(error).split())[:200]}): restore the config.json it was "
                      f"trained with, or {way_on}")


_NO_CHECKPOINT = ("workdir {workdir}: no checkpoint to restore (train one first: python -m "
                  "facekp_jax.main --config=... --workdir={workdir})")


def _listing(ckpt: Checkpointer | None) -> list[int] | None:
  """``ckpt``'s steps now; None where listing them raced a deletion or where ``ckpt`` could
  not be made (so that a reader tries again)."""
  try:
    return ckpt.steps() if ckpt is not None else None
  except _DELETED_WHILE_LISTED:
    return None

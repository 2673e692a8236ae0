"""Orbax in one place: a run's checkpoints, their retention, and restore-or-init.

A checkpoint holds the whole ``TrainState`` (params, batch statistics, optimizer
state, step, RNG) and a small JSON ``progress`` item (the epoch's running loss
sums and the metric history), so a resumed run continues the very same
computation. Orbax writes each checkpoint into a temporary folder and renames
it into place when complete, so a killed save is never picked up on restart.
Retention: the last ``keep`` checkpoints plus the best by validation RMSE. ``restore_trained``
reads a finished or running workdir's best or latest state, read only (evaluate, predict, export).

With several processes every process creates the ``Checkpointer`` and calls ``save``,
``restore``, ``wait`` and ``close`` at the same points: Orbax synchronises them, process 0
(its primary host) creates folders, writes ``progress`` and renames a finished checkpoint into
place, and every process must see the same ``workdir`` (shared storage; checked on creation).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from facekp_jax.core import sharding
from facekp_jax.core.errors import WorkdirError
from facekp_jax.training import distributed

_BEST_METRIC = "val_rmse"
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
    absl_logger = logging.getLogger("absl")  # Orbax logs through absl.logging.
    absl_logger.addFilter(_read_only_notes)
    try:
      options = ocp.CheckpointManagerOptions(
          preservation_policy=policy, create=not read_only, best_fn=lambda m: m[_BEST_METRIC],
          best_mode="min", cleanup_tmp_directories=not read_only, read_only=read_only)
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "progress"))
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
    return restored.state, restored.progress

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


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
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = Checkpointer(workdir, read_only=True) if os.path.isdir(ckpt_dir) else None
  try:
    latest = ckpt.latest_step() if ckpt else None
    if latest is None:
      raise WorkdirError(
          f"workdir {workdir}: no checkpoint to restore (train one first: python -m "
          f"facekp_jax.main --config=... --workdir={workdir})")
    step = latest
    if which == "best" and ckpt.best_step() is not None:
      step = ckpt.best_step()
    try:
      state, _ = ckpt.restore(jax.eval_shape(target_fn), step=step)
    except (ValueError, KeyError, TypeError) as e:
      detail = " ".join(str(e).split())[:200]
      raise WorkdirError(f"workdir {workdir}: the checkpoint at step {step} does "
                         f"not fit the model of config.json ({detail})") from None
  finally:
    if ckpt:
      ckpt.close()
  return state, step

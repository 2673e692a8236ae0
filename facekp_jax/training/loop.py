"""The training loop: the epochs and their cadence, checkpoints, the final evaluation.

``train_and_evaluate`` checks the config (``training.config``) and the workdir, loads the data,
resumes from the latest checkpoint and runs the epochs through ``steps.Trainer``'s jitted steps
(the state is ``training.state``'s, the pure step ``training.steps``'), then evaluates and
writes the workdir's files.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from facekp_jax.core import keypoints, plots, sharding
from facekp_jax.core import metrics as metrics_lib
from facekp_jax.core.errors import ConfigError, WorkdirError
from facekp_jax.core.faces import Faces
from facekp_jax.data import augment, on_device
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.training import checkpoint, interrupts, lock, steps, weights
from facekp_jax.training import config as config_lib
from facekp_jax.training import state as state_lib
from facekp_jax.training import workdir as workdir_lib


def epoch_batches(train: Faces, config, epoch: int, start: int = 0):
  """The augmented global batches of one epoch from batch ``start`` on.

  A pure function of (seed, epoch, batch index), so a resumed run replays
  exactly the batches an uninterrupted run would have seen.
  """
  layout = keypoints.get(config.data.keypoints)
  for indices, plan in augment.epoch_plans(len(train), config, epoch, start=start):
    yield augment.apply_plan(train.take(indices), plan, config.augment, layout)


class _LossSums:
  """Running (sse, count, present) of an epoch, folded on the host in step order.

  ``present`` counts the labelled coordinates of the batches before augmentation, so
  ``present - count`` is how many the geometric augmentation pushed out of the frame.
  Device results are fetched only at fold points (checkpoints, epoch ends), so
  steps stay asynchronous in between; a non-finite loss is reported with the
  first step that produced it.
  """

  def __init__(self, progress: dict | None = None):
    progress = progress or {}
    self.sse, self.count = progress.get("epoch_sse", 0.0), progress.get("epoch_count", 0.0)
    self.present = progress.get("epoch_present", self.count)  # Absent before geometry.
    self._pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict, present: float) -> None:
    """Metrics of ``step``, or of the steps from ``step`` on when stacked (one call, K steps)."""
    self._pending.append((step, metrics))
    self.present += present

  def progress(self) -> dict:
    """The epoch's sums so far, for a checkpoint (call after ``fold``)."""
    return {"epoch_sse": self.sse, "epoch_count": self.count, "epoch_present": self.present}

  def fold(self) -> None:
    for step, m in jax.device_get(self._pending):
      sse, count = np.atleast_1d(m["sse"]), np.atleast_1d(m["count"])
      bad = np.flatnonzero(~np.isfinite(sse))
      if bad.size:
        raise FloatingPointError(f"non-finite training loss at step {step + bad[0]}; stopped, "
                                 "the last good checkpoint is kept")
      self.sse += float(np.sum(sse, dtype=np.float64))
      self.count += float(np.sum(count, dtype=np.float64))
    self._pending = []

  @property
  def loss(self) -> float:
    return self.sse / max(self.count, 1.0)


def _with_layout(config: ml_collections.ConfigDict, layout) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose ``data.keypoints`` names ``layout`` (what config.json keeps)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.keypoints = layout.name
  return config


def _resumed_layout(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """With ``data.keypoints`` "" (the data's own), a workdir's run keeps the layout it has."""
  if config.data.keypoints or not os.path.isfile(os.path.join(workdir, "config.json")):
    return config
  try:
    saved = config_lib.read_config(workdir).data.keypoints
  except WorkdirError:
    return config  # check_workdir tells what is wrong with the workdir.
  return _with_layout(config, keypoints.get(saved))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
  """Trains on ``config.data``, evaluates on the validation split, writes the workdir.

  Resumes from the latest checkpoint in ``workdir`` when there is one. Input
  problems raise ``DataError`` / ``ConfigError`` / ``WorkdirError`` (``core.errors``)
  before anything is written.

  Returns:
    The final results (also written to ``workdir/results.json``).

  Raises:
    interrupts.Interrupted: after saving a checkpoint in answer to SIGTERM/SIGINT.
    FloatingPointError: on a non-finite loss (nothing is saved past the last good step).
    WorkdirError: also when a write fails on a full or failing disk: the last
      complete checkpoint and metrics.jsonl stay as they were, and the same command resumes.
  """
  t_start = time.time()
  mesh = sharding.make_mesh()
  config_lib.check_config(config, mesh.devices.size)
  config = _resumed_layout(config, workdir)
  workdir_lib.check_workdir(workdir, config, allow_config_change)
  train, val, layout, source = dataset_lib.load_dataset(config.data, config.seed)
  config = _with_layout(config, layout)
  train = augment.training_faces(train, config)
  if config.batch_size > len(train):
    raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(train)} training faces "
                      f"of {source}")
  logging.info("data: %s: %d train / %d validation faces", source, len(train), len(val))
  # Read (and checked) before anything is written; a run that resumes has its own weights.
  initial = None if checkpoint.has_steps(workdir) else weights.initial(config, layout, mesh)
  # The lock before anything is written: one training per workdir.
  with lock.acquire(workdir), workdir_lib.disk_failures_end_the_run(workdir):
    writer = workdir_lib.RunWriter(workdir, enabled=jax.process_index() == 0)
    writer.write_config(config)
    writer.write_trained_keypoints(train, layout)
    trainer = steps.Trainer(config, mesh)
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    try:
      steps_per_epoch = len(train) // config.batch_size
      if ckpt.latest_step() is not None:
        state, progress = ckpt.resume(trainer.abstract_state(steps_per_epoch))
        logging.info("resumed from the checkpoint at step %d", int(state.step))
      else:
        state, progress = trainer.init_state(steps_per_epoch), {"history": []}
        if initial is not None:
          state = weights.start_from(state, initial[0], bool(config.ema_decay))
          logging.info("weights from %s", initial[1])
      writer.rewrite_metrics(progress["history"])
      state, history = _fit(trainer, state, progress, train, val, ckpt, writer)
      ckpt.wait()
      last, best = int(jax.device_get(state.step)), ckpt.best_step()
      # The figures and plots are the final state's; the readers default to the best checkpoint.
      described = f"step {last}, the last" + (f"; best checkpoint: step {best}" if best else "")
      results = {
          "source": source, "num_train": len(train), "num_val": len(val),
          "epochs": config.num_epochs, "steps": last, "evaluated_step": last,
          "train_rmse": history[-1]["train_rmse"] if history else None,
          "best_checkpoint_step": best, "devices": mesh.devices.size,
      }
      predictions = None
      if len(val):
        predictions, figures = _final_evaluation(trainer, state, train, val, layout)
        results.update(figures)
      results["wall_seconds"] = time.time() - t_start
      writer.write_results(results)
      if writer.enabled:
        plots.write_run_plots(workdir, history, val, predictions,
                              results.get("val_per_keypoint_rmse"), layout,
                              train.mask.max(axis=0), described)
    finally:
      ckpt.close()  # Waits for saves in flight: only good states are ever saved.
      writer.close()
  if len(val):
    logging.info("validation RMSE %.3f px (mean-shape baseline %.3f px), NME %.4f at %s "
                 "(evaluate, predict and export read the best checkpoint unless told "
                 "--checkpoint=latest); outputs in %s", results["val_rmse"],
                 results["mean_shape_val_rmse"], results["val_nme"], described, workdir)
    warning = metrics_lib.no_better_than_mean_shape(results["val_rmse"],
                                                    results["mean_shape_val_rmse"])
    if warning:
      logging.warning("%s on the validation split", warning)
  else:
    logging.info("trained on every face (no validation split); the last checkpoint is the model; "
                 "outputs in %s", workdir)
  return results


def _final_evaluation(trainer: steps.Trainer, state: state_lib.TrainState, train: Faces,
                      val: Faces, layout: keypoints.Layout) -> tuple[np.ndarray, dict]:
  """(predictions, figures) of the final state on ``val``; with an EMA, the raw weights' too."""
  tta = trainer.config.tta
  predictions = trainer.predict(state, val.images, tta=tta)
  final = metrics_lib.keypoint_metrics(predictions, val.targets, val.mask, layout)
  baseline = metrics_lib.keypoint_metrics(metrics_lib.mean_shape_prediction(train, len(val)),
                                          val.targets, val.mask, layout)
  out = {f"val_{k}": v for k, v in final.items()}
  out["mean_shape_val_rmse"] = baseline["rmse"]
  if state.ema_params is not None:
    raw = trainer.predict(state, val.images, tta=tta, ema=False)
    out["val_rmse_raw_weights"] = metrics_lib.keypoint_metrics(raw, val.targets, val.mask,
                                                               layout)["rmse"]
  return predictions, out


def _fit(trainer: steps.Trainer, state: state_lib.TrainState, progress: dict, train: Faces,
         val: Faces, ckpt: checkpoint.Checkpointer, writer: workdir_lib.RunWriter):
  """The training loop from ``state.step`` to the end; returns (state, metric history)."""
  config = trainer.config
  history = list(progress["history"])
  steps_per_epoch = len(train) // config.batch_size
  total, every = config.num_epochs * steps_per_epoch, config.checkpoint_every_steps
  start = int(jax.device_get(state.step))
  dataset = on_device.upload(train, trainer.mesh) if config.input_on_device else None
  sums = _LossSums(progress if start % steps_per_epoch else None)  # Resumed mid-epoch.
  bar, t0 = None, time.time()
  with interrupts.StopRequest() as stop:
    for step, k, state, metrics, present in train_calls(trainer, state, train, dataset, start,
                                                        total):
      epoch = (step - 1) // steps_per_epoch  # Of this call's steps, from 0.
      if bar is None:
        bar = tqdm(initial=step - k - epoch * steps_per_epoch, total=steps_per_epoch,
                   leave=False, disable=None, desc=f"epoch {epoch + 1}/{config.num_epochs}")
      sums.add(step - k + 1, metrics, present)
      bar.update(k)
      if step % steps_per_epoch:  # Within an epoch: a checkpoint on request or every N steps.
        stopping = stop.stop_after(step, k)  # A collective vote with several processes.
        if stopping or (every and step % every == 0):
          sums.fold()
          ckpt.save(state, {"history": history, **sums.progress()})
          if stopping:
            raise interrupts.Interrupted(stop.signum, step)
        continue
      bar.close()
      record = _epoch_record(trainer, state, sums, val, epoch + 1, step, t0)
      history.append(record)
      ckpt.save(state, {"history": history},
                metrics={"val_rmse": record["val_rmse"]} if len(val) else None)
      writer.append_metrics(record)
      if step < total and stop.stop_after(step, boundary=True):
        raise interrupts.Interrupted(stop.signum, step)
      sums, bar, t0 = _LossSums(), None, time.time()
  return state, history


def _epoch_record(trainer: steps.Trainer, state: state_lib.TrainState, sums: _LossSums,
                  val: Faces, epoch: int, step: int, t0: float) -> dict:
  """An epoch's line of metrics.jsonl (training sums, validation figures), logged."""
  sums.fold()
  record = {"epoch": epoch, "step": step, "train_loss": sums.loss,
            "train_rmse": float(np.sqrt(sums.loss)),
            "train_out_of_frame": int(round(sums.present - sums.count))}
  if len(val):
    figures = metrics_lib.keypoint_metrics(trainer.predict(state, val.images), val.targets,
                                           val.mask, trainer.layout)
    record.update(val_rmse=figures["rmse"], val_nme=figures["nme"])
  record["epoch_seconds"] = time.time() - t0
  logging.info("epoch %d/%d: train loss %.3f px^2, %s (%.1fs)", epoch, trainer.config.num_epochs,
               record["train_loss"], f"val RMSE {record['val_rmse']:.3f} px, NME "
               f"{record['val_nme']:.4f}" if len(val) else "no validation split",
               record["epoch_seconds"])
  if record["train_out_of_frame"]:
    logging.info("  %d labelled coordinates lay beyond the model's reach (after augmentation) "
                 "and were left out of the loss", record["train_out_of_frame"])
  return record


def train_calls(trainer: steps.Trainer, state: state_lib.TrainState, train: Faces, dataset,
                start: int, stop: int):
  """Runs the training steps from global step ``start`` to ``stop``, one jitted call at a time.

  Yields (step reached, steps this call took, state, metrics, labelled coordinates of those
  batches before augmentation).

  Host input: one step per call, the batch built and augmented by numpy. Input on
  the devices (``dataset`` given): up to ``config.steps_per_call`` steps per call,
  never past an epoch's end or a ``checkpoint_every_steps`` boundary, so checkpoints
  land on the same steps in both modes.
  """
  config, mesh, layout = trainer.config, trainer.mesh, trainer.layout
  steps_per_epoch = len(train) // config.batch_size
  per_call, every = max(1, config.steps_per_call), config.checkpoint_every_steps
  step = start
  while step < stop:
    epoch, first = divmod(step, steps_per_epoch)
    plans = augment.epoch_plans(len(train), config, epoch, start=first)
    end = min(stop, (epoch + 1) * steps_per_epoch)
    while step < end:
      if dataset is None:
        k = 1
        indices, plan = next(plans)
        rows = sharding.process_rows(len(indices))  # Build and augment this process's rows.
        batch = augment.apply_plan(train.take(indices[rows]),
                                   {name: p[rows] for name, p in plan.items()}, config.augment,
                                   layout)
        local = {"images": batch.images, "targets": batch.targets, "mask": batch.mask}
        state, metrics = trainer.train_step(state, sharding.to_global(local, mesh))
      else:
        room = end - step if not every else min(end - step, every - step % every)
        # Full calls, else single steps: two compiled programs at most (the loop is unrolled).
        k = per_call if room >= per_call else 1
        chunk = [next(plans) for _ in range(k)]
        indices = np.stack([c[0] for c in chunk])
        plan = {name: np.stack([c[1][name] for c in chunk]) for name in chunk[0][1]}
        local = jax.tree.map(lambda x: x[:, sharding.process_rows(x.shape[1])], (indices, plan))
        state, metrics = trainer.train_steps(
            state, dataset, *sharding.to_global(local, mesh, sharding.steps_sharded))
      step += k
      yield step, k, state, metrics, float(train.mask[indices].sum())

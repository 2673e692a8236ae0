"""Everything a run writes into its workdir: atomic files, plots, the workdir checks.

The figures themselves come from ``metrics``.
"""

from __future__ import annotations

import json
import os
import tempfile

import matplotlib
import ml_collections

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from facekp_jax import config_upgrade, keypoints
from facekp_jax.data import Faces


def _atomic_write(path: str, write) -> None:
  """Writes through a temporary file in the same folder, then renames it into place."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj) -> None:
  _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_figure(fig, path: str) -> None:
  _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
  plt.close(fig)


def plot_grid(images: np.ndarray, predictions: np.ndarray, targets=None, mask=None,
              title: str = "", size: int = 4):
  """A size x size grid of faces: true keypoints (green dots), predicted (red crosses)."""
  fig, axes = plt.subplots(size, size, figsize=(2.2 * size, 2.2 * size))
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i >= len(images):
      continue
    ax.imshow(images[i].squeeze(), cmap="gray", vmin=0, vmax=1)
    if targets is not None:
      present = mask[i].reshape(-1, 2).min(1) > 0
      t = targets[i].reshape(-1, 2)[present]
      ax.plot(t[:, 0], t[:, 1], "o", ms=3, mfc="none", mec="lime", mew=1)
    p = predictions[i].reshape(-1, 2)
    ax.plot(p[:, 0], p[:, 1], "x", ms=4, color="red", mew=1)
  fig.suptitle(title + "  (green o: true, red x: predicted)", fontsize=10)
  return fig


def plot_curves(history: list[dict]):
  epochs = [h["epoch"] for h in history]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(epochs, [h["train_rmse"] for h in history], label="train RMSE (augmented batches)")
  if history and "val_rmse" in history[0]:
    ax.plot(epochs, [h["val_rmse"] for h in history], label="validation RMSE")
  ax.set_xlabel("epoch")
  ax.set_ylabel("RMSE (pixels)")
  ax.set_yscale("log")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  return fig


def plot_ced(per_face_nme, normaliser: str, title: str = "", threshold: float = 0.10):
  """The cumulative error distribution: share of faces with NME <= x, up to ``threshold``."""
  errors = np.sort(np.asarray(per_face_nme, np.float64))
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.step(errors, np.arange(1, len(errors) + 1) / max(len(errors), 1), where="post")
  ax.set_xlim(0, threshold)
  ax.set_ylim(0, 1)
  ax.set_xlabel(f"NME ({normaliser.replace('_', '-')})")
  ax.set_ylabel("share of faces")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  return fig


def plot_per_keypoint(per_keypoint_rmse: dict):
  names = [n for n, v in per_keypoint_rmse.items() if v is not None]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.barh(names, [per_keypoint_rmse[n] for n in names])
  ax.invert_yaxis()
  ax.set_xlabel("validation RMSE (pixels)")
  ax.grid(True, axis="x", alpha=0.3)
  return fig


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
  # Fields the saved run predates mean what the project did before them (config_upgrade);
  # others it does not have were added later without changing anything: not a difference.
  old = {k: v for k, v in _flatten(config_upgrade.upgrade(saved)).items()
         if k in had or k in new}
  return [f"{k}: {old[k]!r} -> {new.get(k, '<absent>')!r}"
          for k in sorted(old) if old[k] != new.get(k, object())]


def check_workdir(workdir: str, config, allow_config_change: bool = False) -> None:
  """Refuses a workdir that cannot be written, or that holds a run of another config.

  Raises:
    WorkdirError: with a one-line description; nothing is created or written.
  """
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"workdir {workdir}: {existing} is not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(f"workdir {workdir}: {existing} is not writable")
  saved_path = os.path.join(workdir, "config.json")
  if os.path.exists(saved_path) and not allow_config_change:
    with open(saved_path) as f:
      diffs = config_differences(json.load(f), config)
    if diffs:
      raise WorkdirError(f"workdir {workdir} holds a run with another config ({'; '.join(diffs)}); "
                         "use a new --workdir, or --allow_config_change to continue anyway")


TRAINED_KEYPOINTS = "trained_keypoints.json"


def trained_keypoints(workdir: str) -> np.ndarray:
  """(30,) 1 for the coordinates of keypoints the run's training split labelled.

  Workdirs written before the record existed count every keypoint as trained.
  """
  path = os.path.join(workdir, TRAINED_KEYPOINTS)
  if not os.path.exists(path):
    return np.ones(keypoints.NUM_COORDS, np.float32)
  try:
    with open(path) as f:
      names = set(json.load(f)["trained"])
  except (OSError, ValueError, KeyError) as e:
    raise WorkdirError(f"workdir {workdir}: cannot read {TRAINED_KEYPOINTS} ({e})") from None
  return np.repeat([float(n in names) for n in keypoints.KEYPOINT_NAMES], 2).astype(np.float32)


class WorkdirError(ValueError):
  """A workdir that cannot be used, described in one line."""


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
      _atomic_write(self._path("config.json"), lambda f: f.write(config.to_json(indent=2).encode()))

  def write_trained_keypoints(self, mask) -> None:
    """Records which keypoints the training split labels (``TRAINED_KEYPOINTS``)."""
    if self.enabled:
      counts = np.asarray(mask).reshape(-1, keypoints.NUM_KEYPOINTS, 2).min(axis=2).sum(axis=0)
      write_json(self._path(TRAINED_KEYPOINTS), {
          "trained": [n for n, c in zip(keypoints.KEYPOINT_NAMES, counts) if c > 0],
          "labelled_faces": {n: int(c) for n, c in zip(keypoints.KEYPOINT_NAMES, counts)}})

  def rewrite_metrics(self, history: list[dict]) -> None:
    """Makes metrics.jsonl hold exactly ``history`` (a resumed run's checkpointed epochs)."""
    if self.enabled:
      text = "".join(json.dumps(r) + "\n" for r in history)
      _atomic_write(self._path("metrics.jsonl"), lambda f: f.write(text.encode()))

  def append_metrics(self, record: dict) -> None:
    """Appends one epoch to metrics.jsonl and to the TensorBoard event file."""
    if not self.enabled:
      return
    with open(self._path("metrics.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
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
      write_json(self._path("results.json"), results)

  def write_plots(self, history, val: Faces, predictions, per_keypoint_rmse) -> None:
    """Learning curves; with a validation split, its 4x4 grid and per-keypoint RMSE too."""
    if not self.enabled:
      return
    save_figure(plot_curves(history), self._path("learning_curves.png"))
    if not len(val):
      return
    n = min(16, len(val))
    sq = val.mask[:n] * (predictions[:n] - val.targets[:n]) ** 2
    save_figure(plot_grid(val.images[:n], predictions[:n], val.targets[:n], val.mask[:n],
                          title=f"validation faces, RMSE of these {n}: "
                          f"{np.sqrt(sq.sum() / max(val.mask[:n].sum(), 1)):.2f} px"),
                self._path("predictions.png"))
    save_figure(plot_per_keypoint(per_keypoint_rmse), self._path("per_keypoint_rmse.png"))

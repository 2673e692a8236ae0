"""The figures: prediction grids, learning curves, the CED, per-keypoint bars; PNG writing.

matplotlib is imported here only, on the first figure (``pyplot``), with the Agg backend, so
training, evaluation and the commands start without it.
"""

from __future__ import annotations

import os

import numpy as np

from facekp_jax.core import files, keypoints
from facekp_jax.core.faces import Faces


def pyplot():
  """``matplotlib.pyplot`` on the file-only Agg backend, imported on first use."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig, path: str, tight: bool = True) -> None:
  """Writes ``fig`` as a PNG, atomically, and closes it (``tight=False``: the figure's own
  size, pixel for pixel at 100 dpi)."""
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100,
                                                 bbox_inches="tight" if tight else None))
  pyplot().close(fig)


def keypoint_groups(layout: keypoints.Layout) -> list[tuple[str, list[int]]]:
  """How a legend names ``layout``'s keypoints: one entry per keypoint up to 15, else one per
  region (the name without its trailing index: ``right_eye_36`` -> ``right_eye``)."""
  if layout.num_keypoints <= 15:
    return [(name, [i]) for i, name in enumerate(layout.names)]
  groups: dict[str, list[int]] = {}
  for i, name in enumerate(layout.names):
    region = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
    groups.setdefault(region, []).append(i)
  return list(groups.items())


def draw_keypoints(ax, xy: np.ndarray, layout: keypoints.Layout, size: float = 6.0,
                   legend: bool = True, lines: bool = True, hollow=None) -> None:
  """Draws one face's keypoints (K, 2) on ``ax``: a colour per ``keypoint_groups`` entry, the
  layout's lines, a legend; NaN keypoints (untrained) are left out, and those where ``hollow``
  (K,) is true (the model unsure of them) are drawn as rings."""
  colours = pyplot().get_cmap("tab20" if len(keypoint_groups(layout)) > 10 else "tab10")
  finite = np.isfinite(xy).all(axis=1)
  if lines:
    for run in layout.lines:
      run = [k for k in run if finite[k]]
      ax.plot(xy[run, 0], xy[run, 1], "-", lw=max(0.5, size / 8), color="white", alpha=0.6)
  hollow = np.zeros(len(xy), bool) if hollow is None else np.asarray(hollow, bool)
  for g, (name, index) in enumerate(keypoint_groups(layout)):
    index = [k for k in index if finite[k]]
    colour = colours(g % colours.N)
    for ring in (False, True):
      part = [k for k in index if hollow[k] == ring]
      if part:
        ax.plot(xy[part, 0], xy[part, 1], "o", ms=size, mec=colour if ring else "black",
                mew=max(0.4, size / 12) * (2 if ring else 1), color=colour,
                mfc="none" if ring else colour, label=name if part[0] == index[0] else None,
                ls="none")
  if legend and ax.get_legend_handles_labels()[0]:
    ax.legend(loc="upper right", fontsize=max(5.0, size * 1.2), framealpha=0.7,
              markerscale=1.0)


def plot_grid(images: np.ndarray, predictions: np.ndarray, targets=None, mask=None,
              title: str = "", size: int = 4, layout: keypoints.Layout | None = None,
              shown=None):
  """A size x size grid of faces: true keypoints (green dots), predicted (red crosses) joined
  by ``layout.lines``; ``shown`` (K,) bool: the predicted keypoints drawn (default: all)."""
  fig, axes = pyplot().subplots(size, size, figsize=(2.2 * size, 2.2 * size))
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
    keep = np.ones(len(p), bool) if shown is None else np.asarray(shown, bool)
    for run in layout.lines if layout is not None else ():
      run = [k for k in run if keep[k]]
      ax.plot(p[run, 0], p[run, 1], "-", lw=0.6, color="red", alpha=0.5)
    ax.plot(p[keep, 0], p[keep, 1], "x", ms=4 if len(p) < 30 else 2, color="red", mew=1)
  fig.suptitle(title + "  (green o: true, red x: predicted)", fontsize=10)
  return fig


def plot_curves(history: list[dict]):
  epochs = [h["epoch"] for h in history]
  fig, ax = pyplot().subplots(figsize=(6, 4))
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
  fig, ax = pyplot().subplots(figsize=(5, 4))
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
  fig, ax = pyplot().subplots(figsize=(7, max(4.5, 0.16 * len(names))))
  ax.barh(names, [per_keypoint_rmse[n] for n in names])
  ax.invert_yaxis()
  ax.set_xlabel("validation RMSE (pixels)")
  ax.grid(True, axis="x", alpha=0.3)
  return fig

# The plots a training writes into its workdir.
RUN_PLOTS = ("learning_curves.png", "predictions.png", "per_keypoint_rmse.png")


def write_run_plots(workdir: str, history, val: Faces, predictions, per_keypoint_rmse,
                    layout: keypoints.Layout, trained=None, described: str = "") -> None:
  """A run's learning curves; with a validation split, its 4x4 grid and per-keypoint RMSE too.

  ``trained`` (2K,): 1 for the coordinates the training split labelled; the grid draws only
  those keypoints' predictions (default: all). ``described``: which weights made
  ``predictions`` (e.g. "step 24, the last; best checkpoint: step 20"), in the titles."""
  path = lambda name: os.path.join(workdir, name)
  curves, grid, per_keypoint = RUN_PLOTS
  save_figure(plot_curves(history), path(curves))
  if not len(val):
    return
  n = min(16, len(val))
  sq = val.mask[:n] * (predictions[:n] - val.targets[:n]) ** 2
  shown = None if trained is None else np.asarray(trained).reshape(-1, 2).min(axis=1) > 0
  save_figure(plot_grid(val.images[:n], predictions[:n], val.targets[:n], val.mask[:n],
                        title=f"validation faces, RMSE of these {n}: "
                        f"{np.sqrt(sq.sum() / max(val.mask[:n].sum(), 1)):.2f} px"
                        + (f"\n{described}" if described else ""),
                        layout=layout, shown=shown),
              path(grid))
  fig = plot_per_keypoint(per_keypoint_rmse)
  fig.axes[0].set_title(described)
  save_figure(fig, path(per_keypoint))

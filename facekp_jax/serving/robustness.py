"""Robustness perturbations: a labelled face set re-scored rotated, scaled and shifted.

Each perturbation is one affine map about the frame centre (``geometry.affine_maps``),
applied to images and labels alike by the training augmentation's own warp
(bilinear, edge fill); a label the map pushes out of the frame becomes missing, so
every score counts only points that are still on the picture.

  rot0, rot+-10, rot+-20, rot+-30   in-plane rotation in degrees (positive: clockwise)
  scale0.85, scale1.15              zoom out / in about the centre
  shift_x+-6, shift_y+-6            translation by 6 px

``score`` gives each perturbation's metrics and its RMSE relative to the
unperturbed faces' (``rmse_ratio``), the figure that tells a model that learned
the face from one that learned the framing. ``Scorer.add`` shows a progress bar over the
perturbations (stderr, terminals only).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from facekp_jax.core import geometry, keypoints, plots
from facekp_jax.core import metrics as metrics_lib
from facekp_jax.core.faces import Faces

# name -> (angle in degrees, scale, (shift x, shift y) in px)
PERTURBATIONS: dict[str, tuple[float, float, tuple[float, float]]] = {
    "rot0": (0.0, 1.0, (0.0, 0.0)),
    "rot-30": (-30.0, 1.0, (0.0, 0.0)), "rot-20": (-20.0, 1.0, (0.0, 0.0)),
    "rot-10": (-10.0, 1.0, (0.0, 0.0)), "rot+10": (10.0, 1.0, (0.0, 0.0)),
    "rot+20": (20.0, 1.0, (0.0, 0.0)), "rot+30": (30.0, 1.0, (0.0, 0.0)),
    "scale0.85": (0.0, 0.85, (0.0, 0.0)), "scale1.15": (0.0, 1.15, (0.0, 0.0)),
    "shift_x-6": (0.0, 1.0, (-6.0, 0.0)), "shift_x+6": (0.0, 1.0, (6.0, 0.0)),
    "shift_y-6": (0.0, 1.0, (0.0, -6.0)), "shift_y+6": (0.0, 1.0, (0.0, 6.0)),
}
# Summary groups: the mean of each group's RMSE ratios (the targets quote these).
GROUPS = {"rot+-10": ("rot-10", "rot+10"), "rot+-20": ("rot-20", "rot+20"),
          "rot+-30": ("rot-30", "rot+30"), "scale0.85": ("scale0.85",),
          "scale1.15": ("scale1.15",), "shift+-6": ("shift_x-6", "shift_x+6", "shift_y-6",
                                                    "shift_y+6")}


def perturb(faces: Faces, name: str) -> Faces:
  """``faces`` under the perturbation ``name`` (labels moved along; off-frame ones missing)."""
  angle, scale, shift = PERTURBATIONS[name]
  n = len(faces)
  forward, inverse = geometry.affine_maps(np.full(n, angle), np.full(n, scale),
                                         np.tile(np.asarray(shift, np.float64), (n, 1)))
  return geometry.warp(faces, forward, inverse)


class Scorer:
  """Accumulates predictions of every perturbation over chunks of faces, then scores them."""

  def __init__(self, predict: Callable[[np.ndarray], np.ndarray],
               layout: keypoints.Layout = keypoints.DEFAULT):
    self.predict = predict
    self.layout = layout
    self._parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        name: [] for name in PERTURBATIONS}

  def add(self, faces: Faces) -> None:
    """Predicts ``faces`` under every perturbation (a progress bar on a terminal)."""
    for name in tqdm(PERTURBATIONS, desc="robustness", unit=" views", leave=False,
                     disable=None):
      moved = perturb(faces, name)
      self._parts[name].append((self.predict(moved.images), moved.targets, moved.mask))

  def results(self) -> dict:
    """{"perturbations": {name: metrics + rmse_ratio}, "groups": {group: mean ratio}}."""
    out = {}
    for name, parts in self._parts.items():
      p, t, m = (np.concatenate([part[i] for part in parts]) for i in range(3))
      out[name] = metrics_lib.keypoint_metrics(p, t, m, self.layout)
    base = out["rot0"]["rmse"]
    for figures in out.values():
      figures["rmse_ratio"] = figures["rmse"] / base if base > 0 else float("nan")
    groups = {g: float(np.mean([out[n]["rmse_ratio"] for n in names]))
              for g, names in GROUPS.items()}
    return {"perturbations": out, "groups": groups}


def score(predict: Callable[[np.ndarray], np.ndarray], faces: Faces,
          layout: keypoints.Layout = keypoints.DEFAULT) -> dict:
  """``Scorer`` over one in-memory face set of ``layout``."""
  scorer = Scorer(predict, layout)
  scorer.add(faces)
  return scorer.results()


def table(results: dict) -> str:
  """One line per perturbation: RMSE, its ratio to the unperturbed RMSE, NME, points scored."""
  lines = [f"{'perturbation':<14}{'RMSE px':>9}{'ratio':>8}{'NME':>9}{'coords':>8}"]
  for name, m in results["perturbations"].items():
    lines.append(f"{name:<14}{m['rmse']:>9.3f}{m['rmse_ratio']:>8.3f}{m['nme']:>9.4f}"
                 f"{m['count']:>8d}")
  lines.append("mean ratios: " + ", ".join(f"{g} {v:.3f}" for g, v in results["groups"].items()))
  return "\n".join(lines)


def plot(results: dict, title: str = ""):
  """RMSE against each perturbation (bars), the unperturbed RMSE as a line."""
  names = list(results["perturbations"])
  values = [results["perturbations"][n]["rmse"] for n in names]
  fig, ax = plots.pyplot().subplots(figsize=(8, 4))
  ax.bar(names, values, color=["#4c72b0" if n != "rot0" else "#55a868" for n in names])
  ax.axhline(values[names.index("rot0")], color="#55a868", lw=1, ls="--")
  ax.set_ylabel("RMSE (pixels)")
  ax.set_title(title)
  ax.tick_params(axis="x", rotation=45)
  ax.grid(True, axis="y", alpha=0.3)
  return fig

"""Read-outs of a trained heatmap head: soft-argmax against sharper, local and DARK-style ones.

  python -m experiments.decoding                 # every finished cross_source run in its scratch
  python -m experiments.decoding --arms=default  # only the reference arm's runs

The heatmap head reads each keypoint's map out by soft-argmax: the expected position under the
map's spatial softmax, over the whole frame (``model.heads``). Heatmap codebases read their maps
out otherwise: the arg-max refined to a sub-cell position by a Taylor step on the smoothed log
map (DARK, Zhang et al., CVPR 2020), or soft-argmax in a window around the arg-max, or a sharper
softmax. This scores the finished runs of experiments/cross_source.py (its ``--scratch`` folder)
with each read-out at inference only (``DECODES``: the same weights, the run's TTA, the maps
the head sows), on both of the run's held-out sets, in-source and cross-source, so that a
read-out that only helps faces unlike the training source's shows.

Writes ``--out``: ``table.md`` (per read-out, the NMEs pooled over the runs and the paired change
from soft-argmax, per direction) and ``results.json`` (every run's figures).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cross_source
from facekp_jax import cli
from facekp_jax.core import files
from facekp_jax.model import apply, heads, resnet
from facekp_jax.serving import predictor, scoring

DEFAULT_OUT = os.path.join(cross_source.HERE, "results", "decoding")


def sharpened(beta: float):
  """Soft-argmax of the maps' logits times ``beta`` (> 1: nearer the arg-max)."""
  return lambda logits, margin: heads.soft_argmax(logits * beta, margin)


def local(radius: int):
  """Soft-argmax within ``radius`` cells (Chebyshev) of each map's arg-max cell."""

  def decode(logits, margin):
    b, h, w, k = logits.shape
    top = jnp.argmax(logits.reshape(b, h * w, k), axis=1)  # (B, K)
    rows = jnp.abs(jnp.arange(h)[None, :, None] - (top // w)[:, None, :]) <= radius
    cols = jnp.abs(jnp.arange(w)[None, :, None] - (top % w)[:, None, :]) <= radius
    inside = rows[:, :, None, :] & cols[:, None, :, :]  # (B, H, W, K)
    return heads.soft_argmax(jnp.where(inside, logits, -jnp.inf), margin)

  return decode


def dark(logits, margin):
  """The arg-max cell plus one Newton step on the log map smoothed by a 5-tap binomial
  filter, the step clipped to one cell (DARK's Taylor refinement; no step where the map is not
  concave there)."""
  b, h, w, k = logits.shape
  taps = jnp.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
  maps = jnp.transpose(logits, (0, 3, 1, 2)).reshape(b * k, 1, h, w)
  maps = jax.lax.conv_general_dilated(maps, (taps[:, None] * taps[None, :])[None, None], (1, 1),
                                      "SAME", precision="highest")
  flat = maps.reshape(b, k, h * w)
  top = jnp.argmax(flat, axis=-1)
  iy, ix = jnp.clip(top // w, 1, h - 2), jnp.clip(top % w, 1, w - 2)

  def at(dy, dx):
    return jnp.take_along_axis(flat, ((iy + dy) * w + ix + dx)[..., None], -1)[..., 0]

  centre = at(0, 0)
  gx, gy = (at(0, 1) - at(0, -1)) / 2, (at(1, 0) - at(-1, 0)) / 2
  hxx, hyy = at(0, 1) - 2 * centre + at(0, -1), at(1, 0) - 2 * centre + at(-1, 0)
  hxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
  det = hxx * hyy - hxy ** 2
  concave = (det > 1e-6) & (hxx < 0)
  safe = jnp.where(concave, det, 1.0)
  ox = jnp.where(concave, jnp.clip(-(hyy * gx - hxy * gy) / safe, -1, 1), 0.0)
  oy = jnp.where(concave, jnp.clip(-(hxx * gy - hxy * gx) / safe, -1, 1), 0.0)
  centres = heads.cell_centres(w, margin)
  step = centres[1] - centres[0]
  return jnp.stack([centres[0] + (ix + ox) * step, centres[0] + (iy + oy) * step],
                   axis=-1).reshape(b, 2 * k)


# Read-outs of the maps (logits (B, H, W, K), the maps' margin in px) -> (B, 2K) pixels; the
# first is the head's own.
DECODES = {
    "soft-argmax": heads.soft_argmax,
    "sharpened x2": sharpened(2.0),
    "sharpened x4": sharpened(4.0),
    "local r=2": local(2),
    "local r=3": local(3),
    "local r=5": local(5),
    "local r=8": local(8),
    "dark": dark,
}


def decoded(model: predictor.Predictor, decode) -> predictor.Predictor:
  """``model`` reading its maps out by ``decode`` instead of its head's soft-argmax."""
  net = resnet.create_model(model.config, dtype=resnet.compute_dtype(model.config))
  margin = model.config.model.heatmap_margin

  def forward(variables, images):
    return decode(jnp.asarray(apply.heatmap_logits(net, variables, images), jnp.float32), margin)

  inference = apply.Inference(net, model.inference.mesh, model.config.eval_batch_size, forward)
  return dataclasses.replace(model, inference=inference)


def score_run(run: dict) -> dict[str, dict[str, float]]:
  """{read-out: {"in": NME, "cross": NME}} of one run (its final state, EMA, TTA), cached in
  its workdir."""
  path = os.path.join(run["workdir"], "decoding.json")
  cached = {}
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
  base = predictor.load(run["workdir"], "latest")
  if base.config.model.head != "heatmap":
    raise ValueError(f"{run['workdir']}: a regression head has no maps to read out")
  tta = base.use_tta()
  for name, decode in DECODES.items():
    if name not in cached:
      model = decoded(base, decode)
      cached[name] = {k: float(scoring.evaluate(model, csv, tta=tta)[0]["nme"])
                      for k, csv in run["scored"].items()}
      files.write_json(path, cached)
  return {name: cached[name] for name in DECODES}


def markdown(runs: list[dict], command: str) -> str:
  reference = next(iter(DECODES))
  lines = ["# Read-outs of the heatmap head's maps", "",
           "- runs: experiments/cross_source.py's finished runs (25 epochs of one MTFL source), "
           "each scored in its final state (EMA weights, flip TTA) with every read-out at "
           "inference only",
           f"- command: `{command}`", "",
           "| read-out | direction | runs | in NME | cross NME | Δ in NME | Δ cross NME |",
           "|---|---|---|---|---|---|---|"]
  for name in DECODES:
    for direction in cross_source.DIRECTIONS:
      mine = [r for r in runs if r["direction"] == direction]
      if not mine:
        continue
      cells = [f"{len(mine)}"]
      for part in ("in", "cross"):
        cells.append(f"{np.mean([r['nme'][name][part] for r in mine]):.4f}")
      for part in ("in", "cross"):
        change = [r["nme"][name][part] / r["nme"][reference][part] - 1 for r in mine]
        cells.append("—" if name == reference else f"{np.mean(change):+.1%}")
      lines.append(f"| {name} | {direction} | " + " | ".join(cells) + " |")
  lines += ["", "runs: " + "; ".join(f"{r['direction']} {r['arm']} seed {r['seed']}"
                                     for r in runs) + ". Δ: the mean over runs of each run's "
            f"NME over its own {reference} NME, minus 1."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
  fv = cli.command_flags()
  flags.DEFINE_string("scratch", cross_source.SCRATCH, "cross_source's scratch folder",
                      flag_values=fv)
  flags.DEFINE_list("arms", [], "only these arms' runs (empty: every arm)", flag_values=fv)
  flags.DEFINE_string("out", DEFAULT_OUT, "where table.md and results.json go", flag_values=fv)
  cli.parse(fv, "python -m experiments.decoding", __doc__.split("\n\n")[0], argv)
  cli.quiet_libraries()
  runs = [run for run in cross_source.finished_runs(fv.scratch)
          if not fv.arms or run["arm"] in fv.arms]
  if not runs:
    cli.usage_error(f"no finished cross_source run under {fv.scratch}: run "
                    "`python -m experiments.cross_source` first")
  for run in runs:
    run["nme"] = score_run(run)
    print(f"{run['direction']} {run['arm']} seed {run['seed']}: " + ", ".join(
        f"{name} {v['cross']:.4f}" for name, v in run["nme"].items()), flush=True)
  command = " ".join(["python -m experiments.decoding"] + list(argv or []))
  os.makedirs(fv.out, exist_ok=True)
  files.write_json(os.path.join(fv.out, "results.json"), {
      "command": command, "runs": [{k: r[k] for k in ("direction", "arm", "seed", "nme")}
                                   for r in runs]})
  text = markdown(runs, command).encode()
  files.atomic_write(os.path.join(fv.out, "table.md"), lambda f: f.write(text))
  print(f"wrote {fv.out}/table.md, results.json")
  return runs


if __name__ == "__main__":
  main()

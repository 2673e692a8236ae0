"""Cross-source accuracy: trained on one source's faces, scored on another's, beside its own.

  python -m experiments.cross_source                        # every arm, both directions, seeds 0, 1
  python -m experiments.cross_source --arms=default,stem-level --seeds=0, --finetune=
  python -m experiments.cross_source --tables_only          # table and plot of the finished runs

../shared/data/mtfl_train.csv.gz holds two sources in file order (``SOURCES``): rows 1-4151
LFW news photographs, rows 4152-7650 web photographs (other cameras, poses, light). Each source
is split once, 80/20 (``ablate.heldout_files``' seeded split): its pool trains, its held-out
part is scored. A run of direction ``lfw-to-web`` trains on the LFW pool (3321 faces) and is
scored on the LFW held-out faces (in-source, 830) and on the web held-out faces (cross-source,
700); ``web-to-lfw`` the reverse (2799 faces train). So each held-out set is scored by a model
of its own source and by one of the other: the cross-source score of one direction and the
in-source score of the other are on the same faces.

Budget: ``--config`` (configs/resnet.py: today's default recipe; ``--config.FIELD=VALUE``
overrides it as the main job's flags do) for ``--epochs`` (25) epochs of the pool, every pool
face training (``data.val_fraction=0``), scored in its final state as the config scores (its
EMA weights and TTA). Arms (``ARMS``) are overrides on top of it and of ``SCREENED_ON`` (the
loss and map levels it had before issue 26, when the arms were screened; the arm
``wing+maps3+stem-level`` is today's default); the first is the reference.

Fine-tuning (``--finetune``, 100 and 500 faces): each run of ``--finetune_arms`` (today's
default) is then
adapted to the other source the way a researcher would, in one config line: ``config.init_from``
= its workdir (weights only; a fresh optimizer and schedule), trained on that many faces drawn
once from the other source's pool under a recipe (``FINETUNE_RECIPES``, ``--finetune_recipes``:
25 epochs of them, one-cycle to 3e-4 beside as many faces of the run's own source by default;
lower and higher rates, without the own faces, on request), and scored on the same two held-out
sets: how much of the gap to a model of that source it closes, what it forgets of its own, in
how many seconds.

Per run: RMSE (px of the 96x96 frame), NME (the layout's normaliser: inter-pupil for the 5
points), FR@0.10 and AUC@0.10 on both held-out sets, and the sorted per-face NMEs (the CED).
Writes ``--out``: ``table.md`` (per arm and direction, mean +- sd over the seeds of every
figure, the cross/in-source NME ratio of the same runs, the cross-source NME against a model
trained on those faces' own source (the other direction's in-source NME, same arm and seed),
and the paired change of the cross-source NME from the reference arm; the fine-tuned runs'
figures), ``ced.png`` (the CED of
in-source and cross-source faces, both directions, every arm, the seeds pooled) and
``results.json``. Runs live under ``--scratch`` (outside the repository), named by direction,
arm, seed and a hash of the whole config; a finished run is skipped on a re-run and a stopped
one resumes from its checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import ml_collections
import numpy as np
import pandas as pd
from absl import flags
from ml_collections import config_flags

from experiments import ablate, ship_model
from experiments.studies import STUDY_LOSS
from facekp_jax import cli
from facekp_jax.core import files, plots
from facekp_jax.model import resnet
from facekp_jax.serving import predictor, scoring
from facekp_jax.training import config as config_lib
from facekp_jax.training import interrupts

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = {"lfw": slice(0, ship_model.LFW_ROWS), "web": slice(ship_model.LFW_ROWS, None)}
DIRECTIONS = {"lfw-to-web": ("lfw", "web"), "web-to-lfw": ("web", "lfw")}
EPOCHS = 25  # Epochs of the training source's pool: ~11 min a run on 2 cores.
SEEDS = (0, 1)
DEFAULT_OUT = os.path.join(HERE, "results", "cross_source")
SCRATCH = os.path.join(os.path.expanduser("~"), ".cache", "facekp_jax", "cross_source")
# Arms: overrides of --config, the first the reference. Figures of the older studies at the
# real budget (held-out MTFL, seed 0) in comments.
# What the arms are overrides of, beside --config: the loss and map levels of configs/resnet.py
# before issue 26 (MSE, no map loss, two levels), on which the arms were screened.
SCREENED_ON = STUDY_LOSS
APPEARANCE = {"augment.contrast_prob": 0.5, "augment.gamma_prob": 0.5, "augment.blur_prob": 0.3,
              "augment.noise_prob": 0.3, "augment.occlude_prob": 0.3}
# configs/resnet.py since issue 26, as overrides of ``SCREENED_ON``.
TODAY_OVERRIDES = {"loss": "wing", "heatmap_loss": 3.0, "model.heatmap_stages": 3}
ARMS: dict[str, dict] = {
    # configs/resnet.py before issue 26 (``SCREENED_ON`` as it is): the reference.
    "before-26": {},
    # Camera variety: contrast, gamma, blur, noise, a grey patch (labels kept).
    "appearance": APPEARANCE,
    # Out-of-plane pose, roughly: the upright face squeezed horizontally inside the warp.
    "squeeze": {"augment.squeeze_range": (0.7, 1.0)},
    # A third, finer level for the heatmap head: the stem's 23x23 map (study defaults: 1.953 px).
    "stem-level": {"model.heatmap_stages": 3},
    # A long, low schedule (study defaults, at batch 32: 1.962 px).
    "lr3e-4-cosine": {"schedule": "cosine", "learning_rate": 3e-4, "warmup_epochs": 1.0,
                      "batch_size": 32},
    # The two that won their first seed, together.
    "squeeze+stem-level": {"augment.squeeze_range": (0.7, 1.0), "model.heatmap_stages": 3},
    # Losses that weigh small errors more than MSE (study 9, small model: Wing's NME 0.104 vs
    # 0.113, but less robust to turns).
    "wing": {"loss": "wing"},
    "l1": {"loss": "l1"},
    # Wing (its first seed: -14 % cross NME LFW to web) with the other levers; a sharper
    # log region (curvature 1 px against 2: small errors weigh more).
    "wing+stem-level": {"loss": "wing", "model.heatmap_stages": 3},
    "wing+epochs50": {"loss": "wing", "num_epochs": 50},
    "wing-eps1": {"loss": "wing", "wing_epsilon": 1.0},
    # Wing with DSNT's map regularisation: each map pulled toward a Gaussian (2 px) at its label.
    "wing+maps": {"loss": "wing", "heatmap_loss": 1.0},
    "wing+maps+stem-level": {"loss": "wing", "heatmap_loss": 1.0, "model.heatmap_stages": 3},
    # The best of those with the maps pulled harder (weight 3) or toward narrower Gaussians
    # (1 px), or trained twice as long.
    # Today's default (configs/resnet.py since issue 26), its values written out.
    "wing+maps3+stem-level": TODAY_OVERRIDES,
    "wing+maps-s1+stem-level": {"loss": "wing", "heatmap_loss": 1.0, "heatmap_loss_sigma": 1.0,
                                "model.heatmap_stages": 3},
    "wing+maps+stem-level+epochs50": {"loss": "wing", "heatmap_loss": 1.0,
                                      "model.heatmap_stages": 3, "num_epochs": 50},
    # A longer run: twice the epochs (twice the time).
    "epochs50": {"num_epochs": 50},
    # Width (study 4: width pays at short budgets): 1.5x every stage's filters (~2.2x the time).
    "wide": {"model.stage_filters": ((96, 96, 384), (192, 192, 768))},
    # Today's default trained twice as long, and 1.5x wider: the two levers left for web to LFW.
    "today+epochs50": {**TODAY_OVERRIDES, "num_epochs": 50},
    "today+wide": {**TODAY_OVERRIDES,
                   "model.stage_filters": ((96, 96, 384), (192, 192, 768))},
}
TODAY = "wing+maps3+stem-level"  # The arm that is configs/resnet.py as it is.
FIGURES = ("rmse", "nme", "fr", "auc")
# Fine-tuning a finished run on a few faces of the other source (``config.init_from``): faces
# drawn from that source's pool (a fixed draw), and the recipes, each overrides of the run's
# config; ``MIXED``: the few faces train beside as many of the run's own pool (drawn the same
# way), against forgetting. The first recipe is the one the benchmark runs unless told.
FINETUNE_FACES = (100, 500)
MIXED = "mixed"
_FINETUNE_BUDGET = {"num_epochs": 25, "warmup_epochs": 0.0}
FINETUNE_RECIPES: dict[str, dict] = {
    "lr3e-4-mixed": {**_FINETUNE_BUDGET, "learning_rate": 3e-4, MIXED: True},
    "lr3e-4": {**_FINETUNE_BUDGET, "learning_rate": 3e-4},
    "lr1e-4": {**_FINETUNE_BUDGET, "learning_rate": 1e-4},
    "lr1e-3": {**_FINETUNE_BUDGET, "learning_rate": 1e-3},
}
_FINETUNE_DRAW = 0xF17E


# ----------------------------------------------------------------------------- data


def source_files(mtfl_csv: str, folder: str) -> dict[str, tuple[str, str]]:
  """Per source, (training pool CSV, held-out CSV) under ``folder``, written once."""
  os.makedirs(folder, exist_ok=True)
  out = {}
  for name, rows in SOURCES.items():
    whole = ship_model.rows_file(mtfl_csv, rows, os.path.join(folder, f"{_stem(name)}.csv"))
    base = config_lib.defaults()
    base.data.train_csv = whole
    out[name] = ablate.heldout_files(base, "mtfl", folder, ablate.HELDOUT_FRACTION)
  return out


def _stem(source: str) -> str:
  return f"mtfl-{source}"


def heldout_csv(scratch: str, source: str) -> str:
  """``source``'s held-out faces under ``scratch``, as ``source_files`` names them."""
  return ablate.split_paths(os.path.join(scratch, "data"), _stem(source))[1]


def finished_runs(scratch: str) -> list[dict]:
  """Every finished run under ``scratch`` (fine-tuned ones left out): direction, arm, seed,
  workdir and the two held-out files it is scored on ("in", "cross")."""
  runs = []
  for done in sorted(glob.glob(os.path.join(scratch, "runs", "*", "*", "seed*", "ablate.json"))):
    workdir = os.path.dirname(done)
    found = _RUN.fullmatch(os.path.relpath(workdir, scratch).replace(os.sep, "/"))
    if not found or found["direction"] not in DIRECTIONS:
      continue
    src, dst = DIRECTIONS[found["direction"]]
    runs.append({"direction": found["direction"], "arm": found["arm"],
                 "seed": int(found["seed"]), "workdir": workdir,
                 "scored": {"in": heldout_csv(scratch, src), "cross": heldout_csv(scratch, dst)}})
  return runs


def few_faces(pool: str, faces: int, folder: str) -> str:
  """``faces`` rows of ``pool`` drawn once (a fixed seed; the 100 are among the 500)."""
  out = os.path.join(folder, f"{os.path.basename(pool)[:-len('.csv')]}-{faces}.csv")
  if not os.path.exists(out):
    frame = pd.read_csv(pool, dtype=str, keep_default_na=False)
    if faces > len(frame):
      raise ValueError(f"{pool}: {faces} faces asked for, the pool has {len(frame)}")
    order = np.random.default_rng(_FINETUNE_DRAW).permutation(len(frame))
    ablate.write_frame(frame.iloc[np.sort(order[:faces])], out)
  return out


def mixed_faces(pool: str, own_pool: str, faces: int, folder: str) -> str:
  """``few_faces`` of ``pool`` followed by as many of ``own_pool`` (the run's own source)."""
  out = os.path.join(folder, f"{os.path.basename(pool)[:-len('.csv')]}-{faces}-mixed.csv")
  if not os.path.exists(out):
    parts = [pd.read_csv(few_faces(p, faces, folder), dtype=str, keep_default_na=False)
             for p in (pool, own_pool)]
    ablate.write_frame(pd.concat(parts, ignore_index=True), out)
  return out


# ----------------------------------------------------------------------------- runs


def run_config(base, arm: str, seed: int, pool: str, epochs: int):
  """The resolved config of one run: ``base`` for ``epochs``, ``SCREENED_ON`` and the arm's
  overrides (which may set ``num_epochs`` too), the pool, every face training."""
  config = base.copy_and_resolve_references()
  config.num_epochs = epochs
  for path, value in {**SCREENED_ON, **ARMS[arm]}.items():
    ablate.set_field(config, path, value)
  config.seed = seed
  config.data.train_csv = pool
  config.data.val_fraction = 0.0
  config.data.val_csv = ""
  return config


def finetune_config(run: ml_collections.ConfigDict, workdir: str, faces_csv: str,
                    recipe: str):
  """A finished run's config, fine-tuned: started from its weights (``init_from``) on
  ``faces_csv`` under ``FINETUNE_RECIPES[recipe]``."""
  config = run.copy_and_resolve_references()
  config.init_from = workdir
  config.data.train_csv = faces_csv
  for path, value in FINETUNE_RECIPES[recipe].items():
    if path != MIXED:
      ablate.set_field(config, path, value)
  return config


def score(model: predictor.Predictor, config, csv: str) -> dict:
  """A run's final state (``model``) on ``csv``, scored as ``config`` scores (EMA weights, its
  TTA)."""
  tta = model.use_tta(config.tta, tuple(config.get("tta_rotations", ())))
  results, _, _ = scoring.evaluate(model, csv, tta=tta)
  return {"rmse": results["rmse"], "nme": results["nme"], "fr": results["fr_0.10"],
          "auc": results["auc_0.10"], "faces": results["num_faces"],
          "normaliser": results["nme_normaliser"],
          "per_face_nme": [round(float(e), 5) for e in sorted(results["per_face_nme"])]}


def run_one(config, workdir: str, scored: dict[str, str]) -> dict:
  """Trains (or resumes, or only reads) one run; its scores on each of ``scored`` ({"in":
  CSV, "cross": CSV}), kept in the workdir per way of scoring."""
  record = ablate.run_one(config, workdir, None)
  path = os.path.join(workdir, f"cross_source-{ablate.scoring_tag(config)}.json")
  if not os.path.exists(path):
    model = predictor.load(workdir, "latest")
    files.write_json(path, {k: score(model, config, csv) for k, csv in scored.items()})
  with open(path) as f:
    scores = json.load(f)
  return {"wall_seconds": record["wall_seconds"], "epoch_seconds": record["epoch_seconds"],
          "steps": record["steps"], "num_train": record["num_train"],
          "skipped": record["skipped"], **scores}


# ----------------------------------------------------------------------------- summary


def summarise(results: dict) -> None:
  """Adds ``summary`` per arm and direction: mean/sd of each figure in and cross, the ratios
  and the paired change from the reference arm, over the seeds that finished."""
  runs = results["runs"]  # {arm: {direction: {seed: record}}}
  reference = results["arms"][0]
  for arm, by_direction in runs.items():
    for direction, by_seed in by_direction.items():
      s = {}
      for part in ("in", "cross"):
        for k in FIGURES:
          s[f"{part}_{k}"] = ablate.mean_sd([r[part][k] for r in by_seed.values()])
      s["ratio"] = ablate.mean_sd([r["cross"]["nme"] / r["in"]["nme"] for r in by_seed.values()])
      # The same faces, scored by a model of their own source: the other direction's in-source.
      other = runs[arm].get(_reverse(direction), {})
      s["vs_native"] = ablate.mean_sd([r["cross"]["nme"] / other[seed]["in"]["nme"]
                                 for seed, r in by_seed.items() if seed in other])
      ref = runs.get(reference, {}).get(direction, {})
      s["cross_nme_change"] = ablate.mean_sd([r["cross"]["nme"] / ref[seed]["cross"]["nme"] - 1.0
                                        for seed, r in by_seed.items() if seed in ref])
      s["in_nme_change"] = ablate.mean_sd([r["in"]["nme"] / ref[seed]["in"]["nme"] - 1.0
                                     for seed, r in by_seed.items() if seed in ref])
      s["wall_seconds"] = ablate.mean_sd([r["wall_seconds"] for r in by_seed.values()])
      s["seeds"] = sorted(by_seed)
      results.setdefault("summary", {}).setdefault(arm, {})[direction] = s


def summarise_finetune(results: dict) -> None:
  """Adds ``finetune_summary``: per arm, direction, recipe and face count, the cross-source NME
  before and after, the share of the gap to a model of that source closed, and the in-source
  NME."""
  out = results["finetune_summary"] = {}
  for arm, by_direction in results["finetune"].items():
    for direction, by_recipe in by_direction.items():
      base = results["runs"][arm][direction]
      native = results["runs"][arm].get(_reverse(direction), {})
      for recipe, faces, by_seed in ((r, f, s) for r, by_faces in by_recipe.items()
                                     for f, s in by_faces.items()):
        s = {"cross_nme_before": ablate.mean_sd([base[k]["cross"]["nme"] for k in by_seed]),
             "cross_nme": ablate.mean_sd([r["cross"]["nme"] for r in by_seed.values()]),
             "in_nme_before": ablate.mean_sd([base[k]["in"]["nme"] for k in by_seed]),
             "in_nme": ablate.mean_sd([r["in"]["nme"] for r in by_seed.values()]),
             "cross_fr": ablate.mean_sd([r["cross"]["fr"] for r in by_seed.values()]),
             "gap_closed": ablate.mean_sd([
                 (base[k]["cross"]["nme"] - r["cross"]["nme"])
                 / (base[k]["cross"]["nme"] - native[k]["in"]["nme"])
                 for k, r in by_seed.items() if k in native]),
             "wall_seconds": ablate.mean_sd([r["wall_seconds"] for r in by_seed.values()]),
             "seeds": sorted(by_seed)}
        out.setdefault(arm, {}).setdefault(direction, {}).setdefault(recipe, {})[faces] = s


def _reverse(direction: str) -> str:
  src, dst = DIRECTIONS[direction]
  return next(d for d, (a, b) in DIRECTIONS.items() if (a, b) == (dst, src))


def _fmt(pair, digits: int, percent: bool = False) -> str:
  mean, sd = pair
  if mean is None:
    return "—"
  scale, unit = (100.0, " %") if percent else (1.0, "")
  text = f"{mean * scale:+.{digits}f}" if percent else f"{mean:.{digits}f}"
  return text + ("" if sd is None else f" ± {sd * scale:.{digits}f}") + unit


def markdown(results: dict) -> str:
  """The benchmark's table, with its budget, data and command."""
  ref = results["arms"][0]
  lines = [
      "# Cross-source accuracy (MTFL: LFW photographs and web photographs)", "",
      f"- data: {results['data']}",
      f"- budget: `{results['config']}` with the loss and map levels it had before issue 26 "
      f"({', '.join(f'`{k}={ablate.fmt_value(v)}`' for k, v in SCREENED_ON.items())}; the "
      f"arms override them), {results['epochs']} epochs of the training "
      f"source's pool (every pool face trains), final state scored as the config scores; "
      f"seeds {results['seeds']}",
      f"- NME: {results['normaliser']} distance; FR: share of faces with NME > 0.10; AUC of "
      "the CED up to 0.10; mean ± sd over seeds",
      f"- command: `{results['command']}`", "",
      "| arm | direction | in RMSE | in NME | in FR | cross RMSE | cross NME | cross FR | "
      "cross AUC | cross/in | vs native | Δ cross NME vs "
      f"{ref} | Δ in NME vs {ref} | wall s/run | parameters | seeds |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for arm in results["arms"]:
    for direction in DIRECTIONS:
      s = results["summary"].get(arm, {}).get(direction)
      if s is None:
        continue
      overrides = ", ".join(f"`{k}={ablate.fmt_value(v)}`" for k, v in ARMS.get(arm, {}).items())
      name = arm if not overrides or direction != next(iter(DIRECTIONS)) else (
          f"{arm} ({overrides})")
      lines.append(
          f"| {name} | {direction} | {_fmt(s['in_rmse'], 3)} | {_fmt(s['in_nme'], 4)} | "
          f"{_fmt(s['in_fr'], 3)} | {_fmt(s['cross_rmse'], 3)} | {_fmt(s['cross_nme'], 4)} | "
          f"{_fmt(s['cross_fr'], 3)} | {_fmt(s['cross_auc'], 3)} | {_fmt(s['ratio'], 2)} | "
          f"{_fmt(s['vs_native'], 2)} | "
          + ("—" if arm == ref else _fmt(s["cross_nme_change"], 1, percent=True)) + " | "
          + ("—" if arm == ref else _fmt(s["in_nme_change"], 1, percent=True)) + " | "
          f"{_fmt(s['wall_seconds'], 0)} | {results['parameters'][arm] / 1e6:.2f} M | "
          f"{','.join(map(str, s['seeds']))} |")
  lines += [
      "", "in: the training source's held-out faces; cross: the other source's held-out faces. "
      "cross/in: the cross-source NME over the in-source NME of the same runs. vs native: the "
      "cross-source NME over the NME of the same arm and seed trained on those faces' own "
      "source (the other direction's in-source figure, on the same faces). Δ: the paired "
      "change of the NME from the reference arm, seed by seed. wall s/run: one run's seconds "
      "(training and scoring), on this machine, beside whatever else ran then."]
  tuned = results.get("finetune_summary", {})
  if tuned:
    recipes = "; ".join(f"{name}: " + ", ".join(
        f"`{k}={ablate.fmt_value(v)}`" for k, v in recipe.items() if k != MIXED)
        + (", the faces beside as many of the run's own pool (faces: the other source's)"
           if recipe.get(MIXED) else "")
        for name, recipe in FINETUNE_RECIPES.items())
    lines += [
        "", "## Fine-tuned on a few faces of the other source", "",
        "Each run above, started from its final weights (`config.init_from`: parameters and "
        "batch statistics; a fresh optimizer and schedule), trained on faces drawn once from "
        "the other source's pool under a recipe (the rest as the run), scored on the same "
        f"held-out faces. Recipes: {recipes}.", "",
        "| arm | direction | recipe | faces | cross NME before | cross NME after | gap closed | "
        "cross FR after | in NME before | in NME after | fine-tune s | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, by_direction in tuned.items():
      for direction, by_recipe in by_direction.items():
        for recipe, faces, s in ((r, f, by_recipe[r][f]) for r in FINETUNE_RECIPES
                                 if r in by_recipe for f in sorted(by_recipe[r])):
          lines.append(
              f"| {arm} | {direction} | {recipe} | {faces} | {_fmt(s['cross_nme_before'], 4)} | "
              f"{_fmt(s['cross_nme'], 4)} | {_fmt(s['gap_closed'], 2)} | "
              f"{_fmt(s['cross_fr'], 3)} | {_fmt(s['in_nme_before'], 4)} | "
              f"{_fmt(s['in_nme'], 4)} | {_fmt(s['wall_seconds'], 0)} | "
              f"{','.join(map(str, s['seeds']))} |")
    lines += ["", "gap closed: (cross NME before - after) / (cross NME before - the NME of the "
              "same arm and seed trained on that source), 1 = as good as a model of the source."]
  return "\n".join(lines) + "\n"


def plot(results: dict):
  """CED of both directions: per arm, in-source (dashed) and cross-source (solid) faces."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, len(DIRECTIONS), figsize=(5.2 * len(DIRECTIONS), 4.2),
                           sharey=True)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, direction in zip(np.atleast_1d(axes), DIRECTIONS):
    src, dst = DIRECTIONS[direction]
    for i, arm in enumerate(results["arms"]):
      by_seed = results["runs"].get(arm, {}).get(direction, {})
      if not by_seed:
        continue
      for part, style, where in (("in", "--", src), ("cross", "-", dst)):
        errors = np.sort(np.concatenate([r[part]["per_face_nme"] for r in by_seed.values()]))
        ax.plot(errors, np.arange(1, len(errors) + 1) / len(errors), style,
                color=colours[i % len(colours)], label=f"{arm}: {where} ({part})")
    ax.axvline(0.10, color="grey", lw=0.8)
    ax.set_xlim(0, 0.15)
    ax.set_xlabel(f"NME ({results['normaliser']})")
    ax.set_title(f"trained on {src}", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # A direction without finished runs has none.
      ax.legend(fontsize=7, loc="lower right")
  np.atleast_1d(axes)[0].set_ylabel("share of faces")
  fig.suptitle(f"Cumulative error, {results['epochs']} epochs, seeds {results['seeds']} pooled",
               fontsize=10)
  fig.tight_layout()
  return fig


def write(results: dict, out: str) -> None:
  summarise(results)
  summarise_finetune(results)
  os.makedirs(out, exist_ok=True)
  files.write_json(os.path.join(out, "results.json"), files.jsonable(results))
  text = markdown(results).encode()
  files.atomic_write(os.path.join(out, "table.md"), lambda f: f.write(text))
  plots.save_figure(plot(results), os.path.join(out, "ced.png"))


# ----------------------------------------------------------------------------- command line


def benchmark(base, config_path: str, arms: list[str], directions: list[str], seeds: list[int],
              epochs: int, mtfl_csv: str, scratch: str, out: str, command: str,
              finetune: tuple[int, ...] = (), finetune_arms: tuple[str, ...] = (),
              finetune_recipes: tuple[str, ...] = (), tables_only: bool = False,
              log=print) -> dict:
  """Runs (or finishes) ``arms`` x ``directions`` x ``seeds``, then fine-tunes the runs of
  ``finetune_arms`` (default: today's default) on ``finetune`` faces of the other source
  under ``finetune_recipes`` (default: the first);
  writes the table, plot and JSON of every finished run of any arm at any seed (in the
  committed results or the scratch folder; ``tables_only``: trains nothing). Returns the
  results.
  """
  finetune_arms = finetune_arms or (TODAY,)
  finetune_recipes = finetune_recipes or (next(iter(FINETUNE_RECIPES)),)
  data = source_files(mtfl_csv, os.path.join(scratch, "data"))
  kept = _kept(out)
  shown = sorted(set(seeds) | _seeds_seen(scratch, kept))
  results = {"config": config_path, "epochs": epochs, "seeds": shown, "arms": list(ARMS),
             "command": command, "runs": {}, "finetune": {}, "parameters": {},
             "finetune_recipes": FINETUNE_RECIPES,
             "data": f"{os.path.basename(mtfl_csv)}, per source (LFW rows 1-"
                     f"{ship_model.LFW_ROWS}, web rows {ship_model.LFW_ROWS + 1}-) "
                     "`ablate.heldout_files`' seeded 80/20 split: " + "; ".join(
                         f"{name} {len(pd.read_csv(pool, usecols=[0]))} train, "
                         f"{len(pd.read_csv(held, usecols=[0]))} held out"
                         for name, (pool, held) in data.items())}
  plan = []  # (direction, arm, seed, config, train it): every arm is in the table.
  for direction in DIRECTIONS:
    for arm in ARMS:
      for seed in shown:
        config = run_config(base, arm, seed, data[DIRECTIONS[direction][0]][0], epochs)
        train = not tables_only and arm in arms and direction in directions and seed in seeds
        if train:
          config_lib.check_config(config, 1)  # A bad arm fails here, before any run starts.
        plan.append((direction, arm, seed, config, train))
        if arm not in results["parameters"]:
          results["parameters"][arm] = resnet.parameter_count(resnet.create_model(config))
  # Finished runs first, so that every write while the others train keeps their figures.
  for direction, arm, seed, config, train in sorted(plan, key=lambda p: p[4]):
    src, dst = DIRECTIONS[direction]
    workdir = _workdir(scratch, direction, arm, seed, config)
    scored = {"in": data[src][1], "cross": data[dst][1]}
    record, status = _run_or_read(config, workdir, scratch, kept, train, scored)
    if record is None:
      continue
    log(f"  {direction} {arm} seed {seed}: in NME {record['in']['nme']:.4f}, cross NME "
        f"{record['cross']['nme']:.4f} ({status})")
    results["runs"].setdefault(arm, {}).setdefault(direction, {})[seed] = record
    results["normaliser"] = record["in"]["normaliser"]
    if status != DONE_BEFORE:  # Written at once, beside every figure read before it.
      write(results, out)
    folder = os.path.join(scratch, "data")
    for recipe in FINETUNE_RECIPES:  # Adapted to the other source.
      for faces in sorted(set(finetune) | set(FINETUNE_FACES)):
        faces_csv = (mixed_faces(data[dst][0], data[src][0], faces, folder)
                     if FINETUNE_RECIPES[recipe].get(MIXED) else
                     few_faces(data[dst][0], faces, folder))
        tuned = finetune_config(config, workdir, faces_csv, recipe)
        tuned_dir = os.path.join(workdir + "-finetune",
                                 f"{faces}faces-{ablate.config_hash(tuned)}")
        record, status = _run_or_read(
            tuned, tuned_dir, scratch, kept, train and arm in finetune_arms and faces in finetune
            and recipe in finetune_recipes, scored)
        if record is None:
          continue
        log(f"    fine-tuned ({recipe}) on {faces} {dst} faces: cross NME "
            f"{record['cross']['nme']:.4f}, in NME {record['in']['nme']:.4f} ({status})")
        results["finetune"].setdefault(arm, {}).setdefault(direction, {}).setdefault(
            recipe, {}).setdefault(faces, {})[seed] = record
        if status != DONE_BEFORE:
          write(results, out)
  if not results["runs"]:
    raise ValueError("no run has finished yet: run without --tables_only first")
  write(results, out)
  log(f"wrote {out}/table.md, ced.png, results.json")
  return results


def _kept(out: str) -> dict[str, dict]:
  """The records of ``out``'s results.json by run (workdir relative to the scratch folder, its
  config's hash in the name): finished figures stay in the table when the scratch folder that
  held their workdirs is gone (another machine, a cleaned cache)."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    saved = json.load(f)
  records = []

  def walk(node):  # runs[arm][direction][seed], finetune[arm][direction][faces][seed]
    if isinstance(node, dict) and "run" in node and "cross" in node:
      records.append(node)
    elif isinstance(node, dict):
      for child in node.values():
        walk(child)

  walk({k: saved.get(k, {}) for k in ("runs", "finetune")})
  return {r["run"]: r for r in records}


DONE_BEFORE = "done before"  # The status of a run read, not trained, by this command.
# A run's key (its workdir under the scratch folder, ``_workdir``); fine-tunes' differ.
_RUN = re.compile(r"runs/(?P<direction>[^/]+)/(?P<arm>[^/]+)/seed(?P<seed>\d+)-[0-9a-f]+")


def _seeds_seen(scratch: str, kept: dict) -> set[int]:
  """The seeds of the runs (not fine-tuned ones) in the committed results or under
  ``scratch``: each stays in the table, whichever seeds a command trains."""
  keys = list(kept) + [os.path.relpath(p, scratch) for p in
                       glob.glob(os.path.join(scratch, "runs", "*", "*", "seed*"))]
  return {int(m["seed"]) for m in map(_RUN.fullmatch, keys) if m}


def _run_or_read(config, workdir: str, scratch: str, kept: dict, train: bool,
                 scored: dict[str, str]) -> tuple[dict | None, str]:
  """(record, "done before" or its seconds) of a run: read from its workdir, else kept from the
  committed results (``_kept``), else trained where ``train``; (None, "") where none of these."""
  key = os.path.relpath(workdir, scratch)
  if os.path.exists(os.path.join(workdir, "ablate.json")) or (train and key not in kept):
    record = run_one(config, workdir, scored)
  elif key in kept:
    record = dict(kept[key], skipped=True)
  else:
    return None, ""
  record["run"] = key
  return record, DONE_BEFORE if record.pop("skipped") else f"{record['wall_seconds']:.0f}s"


def _workdir(scratch: str, direction: str, arm: str, seed: int, config) -> str:
  return os.path.join(scratch, "runs", direction, arm, f"seed{seed}-{ablate.config_hash(config)}")


def main(argv=None) -> dict:
  fv = cli.command_flags()
  config_flags.DEFINE_config_file("config", os.path.join("configs", "resnet.py"),
                                  "the recipe (overrides: --config.FIELD=VALUE)",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_list("arms", list(ARMS), f"of {list(ARMS)}; the first is the reference",
                    flag_values=fv)
  flags.DEFINE_list("directions", list(DIRECTIONS), f"of {list(DIRECTIONS)}", flag_values=fv)
  flags.DEFINE_string("seeds", ",".join(map(str, SEEDS)), "a count (2: seeds 0,1) or a comma "
                      "list", flag_values=fv)
  flags.DEFINE_integer("epochs", EPOCHS, "epochs of the training source's pool", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_string("mtfl_csv", ablate.MTFL_CSV, "MTFL's faces", flag_values=fv)
  flags.DEFINE_string("scratch", SCRATCH, "split files and run workdirs (outside the "
                      "repository)", flag_values=fv)
  flags.DEFINE_string("out", DEFAULT_OUT, "where table.md, ced.png, results.json go",
                      flag_values=fv)
  flags.DEFINE_list("finetune", [str(f) for f in FINETUNE_FACES], "fine-tune the runs of "
                    "--finetune_arms on this many faces of the other source (empty: none)",
                    flag_values=fv)
  flags.DEFINE_list("finetune_arms", [TODAY], "the arms whose runs are fine-tuned",
                    flag_values=fv)
  flags.DEFINE_list("finetune_recipes", [next(iter(FINETUNE_RECIPES))],
                    f"of {list(FINETUNE_RECIPES)}", flag_values=fv)
  flags.DEFINE_bool("tables_only", False, "train nothing: the table and plot of the runs that "
                    "finished", flag_values=fv)
  cli.parse(fv, "python -m experiments.cross_source", __doc__.split("\n\n")[0], argv)
  unknown = [a for a in fv.arms + fv.finetune_arms if a not in ARMS] + [
      d for d in fv.directions if d not in DIRECTIONS] + [
      r for r in fv.finetune_recipes if r not in FINETUNE_RECIPES]
  if unknown or not fv.arms or not fv.directions:
    cli.usage_error(f"unknown arm, direction or recipe {unknown}: arms {list(ARMS)}, "
                    f"directions {list(DIRECTIONS)}, recipes {list(FINETUNE_RECIPES)}")
  try:
    seeds = ablate.parse_seeds(fv.seeds)
  except ValueError:
    cli.usage_error(f"--seeds={fv.seeds}: a count >= 1 or a comma list of whole numbers")
  try:
    finetune = tuple(int(f) for f in fv.finetune)
  except ValueError:
    finetune = (0,)
  if any(f < 1 for f in finetune):
    cli.usage_error(f"--finetune={','.join(fv.finetune)}: face counts >= 1, comma separated")
  scratch = os.path.realpath(fv.scratch)
  if scratch == ablate.ROOT or scratch.startswith(ablate.ROOT + os.sep):
    cli.usage_error(f"--scratch {fv.scratch} is inside the repository; checkpoints must stay "
                    "out")
  cli.quiet_libraries()
  command = " ".join(["python -m experiments.cross_source"] + list(
      sys.argv[1:] if argv is None else argv))
  config_path = config_flags.get_config_filename(fv["config"])
  try:
    with cli.user_errors():
      return benchmark(fv.config, config_path, fv.arms, fv.directions, seeds, fv.epochs,
                       fv.mtfl_csv, scratch, fv.out, command, finetune,
                       tuple(fv.finetune_arms), tuple(fv.finetune_recipes), fv.tables_only)
  except interrupts.Interrupted as e:
    print(f"{e} (finished runs are kept; the same command skips them and resumes this one)",
          file=sys.stderr)
    sys.exit(128 + e.signum)


if __name__ == "__main__":
  main()

"""The model shipped in the package: the default recipe on MTFL's real faces (5 points), packed.

  python -m experiments.ship_model                 # all 7650 faces -> facekp_jax/models/mtfl5
  python -m experiments.ship_model --mode=heldout  # the same recipe on 80 %, scored on the 20 %
  python -m experiments.ship_model --mode=cross    # trained on the LFW rows, scored on the web rows
  python -m experiments.ship_model --mode=balanced # all faces, the two sources drawn equally often

Every mode trains configs/resnet.py as it is (the default recipe: one-cycle Adam at batch 16,
the wing loss and the map loss, the heatmap head on three levels, EMA, flip and turned-view
TTA) for 25 epochs on ../shared/data/mtfl_train.csv.gz, whose Kaggle
columns hold MTFL's 5 points only, so the run's layout is ``mtfl5`` (10 outputs). No face is
set aside for validation (``data.val_fraction=0``): the model is the last checkpoint, in every
mode alike. ``ship`` packs it (``serving.predictor.pack``: float16 weights, ~2 MB) into
``facekp_jax/models/mtfl5``, what ``predict`` and ``Predictor.load()`` use without a workdir.
``heldout`` holds out ablate's seeded 20 % (the 1530 faces every held-out study scores on) and
``cross`` trains on the 4151 LFW rows (news photos) and scores the 3499 web rows (other
cameras, poses, light). Their committed figures (``results/ship_model/{heldout,cross}.json``)
are the model shipped before issue 26 (50 epochs of the recipe of its day, ``recipe(before_26)``);
today's recipe's held-out and cross-source figures, which the README quotes, are study
``schedule``'s arm ``today`` and ``cross_source.py``'s. ``balanced`` trains on every face
with the two sources sampled equally: the web rows (the smaller source) repeated, a fixed draw
of them twice, until they are as many as the LFW rows (4151 + 4151 rows), for as many steps as
``ship`` (``balanced_epochs``); it is scored against ``ship`` on faces of neither source, by
``python -m experiments.confidence --model=WORKDIR`` (300W). Runs live under --scratch and resume;
figures go to experiments/results/ship_model/<mode>.json. MTFL is for research use only.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from absl import flags

from experiments import ablate
from experiments.studies import STUDY_PINNED
from facekp_jax import cli
from facekp_jax.core import files
from facekp_jax.serving import predictor, scoring
from facekp_jax.training import config as config_lib
from facekp_jax.training import loop

MODES = ("ship", "heldout", "cross", "balanced")
LFW_ROWS = 4151  # Data rows 1-4151 of mtfl_train are LFW photos, the rest web photos.
SHIPPED_EPOCHS = 25  # The shipped model's budget: 25 epochs of every face (the studies').
BEFORE_26_EPOCHS = 50
_BALANCED_DRAW = 0xBA1  # The web rows drawn a second time in ``balanced``.
SCRATCH = os.path.join(os.path.expanduser("~"), ".cache", "facekp_jax", "ship_model")
OUT = os.path.join(ablate.DEFAULT_OUT, "ship_model")


def rows_file(source: str, rows: slice, path: str) -> str:
  """``source``'s data rows ``rows`` as ``path`` (written once)."""
  if not os.path.exists(path):
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    ablate.write_frame(frame.iloc[rows], path)
  return path


def balanced_rows(source: str, path: str) -> str:
  """``source``'s rows with the web rows repeated (all of them, then a fixed draw) until they
  are as many as the LFW rows, as ``path`` (written once): each source an equal share of an
  epoch's draws."""
  if not os.path.exists(path):
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    lfw, web = frame.iloc[:LFW_ROWS], frame.iloc[LFW_ROWS:]
    if len(web) > len(lfw):
      raise ValueError(f"{source}: {len(web)} web rows, more than its {len(lfw)} LFW rows")
    again = np.random.default_rng(_BALANCED_DRAW).choice(len(web), len(lfw) - len(web),
                                                         replace=False)
    ablate.write_frame(pd.concat([lfw, web, web.iloc[np.sort(again)]]), path)
  return path


def balanced_epochs(faces: int, balanced_faces: int, epochs: int = SHIPPED_EPOCHS) -> int:
  """The epochs of ``balanced_faces`` rows nearest ``epochs`` epochs of ``faces`` in steps."""
  return max(1, round(epochs * faces / balanced_faces))


def data_files(mode: str, mtfl_csv: str, scratch: str) -> tuple[str, str | None]:
  """(training CSV, scored CSV or None) of a mode."""
  folder = os.path.join(scratch, "data")
  os.makedirs(folder, exist_ok=True)
  if mode == "ship":
    return mtfl_csv, None
  if mode == "balanced":
    return balanced_rows(mtfl_csv, os.path.join(folder, "mtfl-balanced.csv")), None
  if mode == "heldout":
    base = config_lib.defaults()
    base.data.train_csv = mtfl_csv
    return ablate.heldout_files(base, "mtfl", folder, ablate.HELDOUT_FRACTION)
  return (rows_file(mtfl_csv, slice(0, LFW_ROWS), os.path.join(folder, "mtfl-lfw.csv")),
          rows_file(mtfl_csv, slice(LFW_ROWS, None), os.path.join(folder, "mtfl-web.csv")))


def recipe(train_csv: str, epochs: int | None = None, before_26: bool = False):
  """The shipped model's recipe on ``train_csv``, every face training (no validation split):
  configs/resnet.py as it is, for the real-face budget of the studies (``SHIPPED_EPOCHS``).
  ``before_26``: the recipe of the model shipped before issue 26 and of w300.py's committed
  figures (50 epochs of constant Adam 1e-4 at batch 32 on the mean squared error)."""
  config = config_lib.defaults()
  if before_26:
    for path, value in STUDY_PINNED.items():
      ablate.set_field(config, path, value)
  config.num_epochs = epochs or (BEFORE_26_EPOCHS if before_26 else SHIPPED_EPOCHS)
  config.data.train_csv = train_csv
  config.data.val_fraction = 0.0
  return config


def run(mode: str, mtfl_csv: str, scratch: str, out: str, epochs: int | None = None,
        model_dir: str = predictor.SHIPPED) -> dict:
  """Trains (or resumes) the mode's run, then packs it (``ship``) or scores it."""
  train_csv, scored_csv = data_files(mode, mtfl_csv, scratch)
  if mode == "balanced" and epochs is None:
    epochs = balanced_epochs(len(pd.read_csv(mtfl_csv, usecols=[0])),
                             len(pd.read_csv(train_csv, usecols=[0])))
  config = recipe(train_csv, epochs)
  workdir = os.path.join(scratch, f"{mode}-{config.num_epochs}ep")
  trained = loop.train_and_evaluate(config, workdir)
  model = predictor.load(workdir, "latest")
  record = {"mode": mode, "train_csv": train_csv, "faces": trained["num_train"],
            "epochs": config.num_epochs, "steps": trained["steps"],
            "budget_images": trained["steps"] * config.batch_size, "seed": config.seed,
            "layout": model.layout.name, "wall_seconds": trained["wall_seconds"],
            "workdir": workdir}
  if mode == "ship":
    predictor.pack(model, model_dir, note={
        "trained_on": f"all {trained['num_train']} faces of mtfl_train (MTFL, LFW and web "
                      "photos; research use only)",
        "recipe": "configs/resnet.py, data.val_fraction=0 (python -m experiments.ship_model)",
        "epochs": config.num_epochs, "budget_images": record["budget_images"]})
    size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir))
    record.update(packed=model_dir, packed_bytes=size)
  elif scored_csv is not None:
    figures, _, _ = scoring.evaluate(model, scored_csv, tta=model.use_tta())
    record.update(scored_csv=scored_csv, scored_faces=figures["num_faces"],
                  tta=model.use_tta(), **{k: figures[k] for k in (
                      "rmse", "nme", "nme_normaliser", "fr_0.10", "auc_0.10",
                      "per_keypoint_rmse")})
  os.makedirs(out, exist_ok=True)
  files.write_json(os.path.join(out, f"{mode}.json"), files.jsonable(record))
  print(record)
  return record


def main(argv=None) -> dict:
  fv = cli.command_flags()
  flags.DEFINE_enum("mode", "ship", MODES, "ship: all faces, packed; heldout: 80/20; cross: "
                    "LFW rows -> web rows; balanced: all faces, each source drawn equally",
                    flag_values=fv)
  flags.DEFINE_string("mtfl_csv", ablate.MTFL_CSV, "MTFL's faces", flag_values=fv)
  flags.DEFINE_string("scratch", SCRATCH, "run workdirs and split files", flag_values=fv)
  flags.DEFINE_string("out", OUT, "where the mode's figures go", flag_values=fv)
  flags.DEFINE_integer("epochs", None, "override the recipe's epochs (a quick look only)",
                       flag_values=fv)
  flags.DEFINE_string("model_dir", predictor.SHIPPED, "ship: where the packed model goes",
                      flag_values=fv)
  cli.parse(fv, "python -m experiments.ship_model", __doc__.splitlines()[0], argv)
  cli.quiet_libraries()
  with cli.user_errors():
    return run(fv.mode, fv.mtfl_csv, fv.scratch, fv.out, fv.epochs, fv.model_dir)


if __name__ == "__main__":
  main()

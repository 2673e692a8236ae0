"""68 points on real faces: the default recipe on two of 300W's sources, scored on the third.

  python -m experiments.w300 --heldout=afw          # train on helen + lfpw, score afw
  python -m experiments.w300 --heldout=lfpw         # train on helen + afw, score lfpw
  python -m experiments.w300 --heldout=helen        # train on lfpw + afw, score helen
  python -m experiments.w300 --heldout=afw --resolution=64   # the same, faces seen at 64 px

../shared/data/w300_train holds 2012 face crops with 300W's 68 points (``helen/`` 870, ``lfpw/``
805, ``afw/`` 337; research use only). The training folder is the two other sources' folders as
symbolic links (``data.pts`` follows them); ``data.keypoints`` is inferred from the point count
(``300w68``) and each face is framed whole from its points' box (``data.pts.FRAMING``). The
recipe is configs/resnet.py as it is (50 epochs, batch 32), every training face training
(``data.val_fraction=0``: the model is the last checkpoint); the held-out source is scored with
the run's TTA, NME normalised by the outer eye corners (points 36 and 45) as 300W's papers
report it. Runs live under --scratch and resume; figures go to
experiments/results/w300/<heldout>.json.

What the 96 px frame costs is measured from below: ``--resolution=R`` shows the model, in
training and scoring alike, each framed face shrunk to R x R (area filter) and enlarged back to
96 x 96 (bilinear), its points unchanged: a face with the detail of an R px frame, at the same
recipe, network and compute (written once as a .pts folder under --scratch, which reads back
framed as it is). The figures go to <heldout>-r<R>.json. AFW held out, seed 0: NME 0.0751 at
64 px against 0.0741 at 96 (FR@0.10 16.3 % against 14.8 %): less than half the pixels cost
1.4 % of the error, so a frame larger than 96 px has little to gain at this data size.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from absl import flags

from experiments import ablate, ship_model
from facekp_jax import cli
from facekp_jax.core import files, keypoints
from facekp_jax.data import pts
from facekp_jax.serving import predictor, scoring
from facekp_jax.training import loop

SOURCES = ("helen", "lfpw", "afw")
W300 = os.path.join(ablate.ROOT, "..", "shared", "data", "w300_train")
SCRATCH = os.path.join(os.path.expanduser("~"), ".cache", "facekp_jax", "w300")
OUT = os.path.join(ablate.DEFAULT_OUT, "w300")


def training_folder(heldout: str, w300: str, scratch: str) -> str:
  """A folder of links to every source but ``heldout`` (made once)."""
  folder = os.path.join(scratch, "data", f"without-{heldout}")
  os.makedirs(folder, exist_ok=True)
  for source in SOURCES:
    link = os.path.join(folder, source)
    if source != heldout and not os.path.lexists(link):
      os.symlink(os.path.abspath(os.path.join(w300, source)), link)
  return folder


def at_resolution(folder: str, resolution: int, dest: str) -> str:
  """``folder``'s faces framed, with the detail of a ``resolution`` px frame, as a .pts
  folder ``dest`` (written once): each face shrunk to resolution^2 and enlarged back."""
  if os.path.isdir(dest):
    return dest
  faces, _, names = pts.read_folder(folder)
  size = keypoints.IMAGE_SIZE
  images = np.rint(faces.images[..., 0] * 255).astype(np.uint8)
  images = np.stack([cv2.resize(cv2.resize(image, (resolution, resolution),
                                           interpolation=cv2.INTER_AREA),
                                (size, size), interpolation=cv2.INTER_LINEAR)
                     for image in images])
  partial = dest + ".partial"
  pts.write_folder(partial, images, faces.targets.reshape(len(faces), -1, 2),
                   [os.path.splitext(name)[0] for name in names])
  os.replace(partial, dest)
  return dest


def run(heldout: str, w300: str, scratch: str, out: str, epochs: int | None = None,
        resolution: int = keypoints.IMAGE_SIZE) -> dict:
  train, scored = training_folder(heldout, w300, scratch), os.path.join(w300, heldout)
  name = f"without-{heldout}"
  if resolution != keypoints.IMAGE_SIZE:
    folder = os.path.join(scratch, "data", f"r{resolution}")
    train = at_resolution(train, resolution, os.path.join(folder, f"without-{heldout}"))
    scored = at_resolution(scored, resolution, os.path.join(folder, heldout))
    name = f"{name}-r{resolution}"
  config = ship_model.recipe(train, epochs, before_26=True)  # What its committed figures ran.
  workdir = os.path.join(scratch, f"{name}-{config.num_epochs}ep")
  trained = loop.train_and_evaluate(config, workdir)
  model = predictor.load(workdir, "latest")
  tta = model.use_tta()
  figures, _, _ = scoring.evaluate(model, scored, tta=tta)
  record = {"heldout": heldout, "trained_on": [s for s in SOURCES if s != heldout],
            "resolution": resolution,
            "faces": trained["num_train"], "epochs": config.num_epochs,
            "steps": trained["steps"], "budget_images": trained["steps"] * config.batch_size,
            "seed": config.seed, "layout": model.layout.name, "tta": tta,
            "scored_faces": figures["num_faces"], "workdir": workdir,
            "wall_seconds": trained["wall_seconds"],
            **{k: figures[k] for k in ("nme", "nme_normaliser", "nme_faces", "rmse", "fr_0.10",
                                       "auc_0.10")}}
  os.makedirs(out, exist_ok=True)
  stem = heldout if resolution == keypoints.IMAGE_SIZE else f"{heldout}-r{resolution}"
  files.write_json(os.path.join(out, f"{stem}.json"), files.jsonable(record))
  print(record)
  return record


def main(argv=None) -> dict:
  fv = cli.command_flags()
  flags.DEFINE_enum("heldout", "afw", SOURCES, "the source scored; the other two train",
                    flag_values=fv)
  flags.DEFINE_string("w300", W300, "300W's training faces (.jpg + .pts per source)",
                      flag_values=fv)
  flags.DEFINE_string("scratch", SCRATCH, "run workdirs and the training folders' links",
                      flag_values=fv)
  flags.DEFINE_string("out", OUT, "where the figures go", flag_values=fv)
  flags.DEFINE_integer("epochs", None, "override the recipe's 50 epochs (a quick look only)",
                       flag_values=fv)
  flags.DEFINE_integer("resolution", keypoints.IMAGE_SIZE, "the detail the faces keep: framed "
                       "faces shrunk to this side and enlarged back", lower_bound=8,
                       upper_bound=keypoints.IMAGE_SIZE, flag_values=fv)
  cli.parse(fv, "python -m experiments.w300", __doc__.splitlines()[0], argv)
  cli.quiet_libraries()
  with cli.user_errors():
    return run(fv.heldout, fv.w300, fv.scratch, fv.out, fv.epochs, fv.resolution)


if __name__ == "__main__":
  main()

"""Keypoints from a trained workdir: Kaggle submissions, prediction files, your own pictures.

  python -m facekp_jax.predict photo.jpg          # the model shipped in the package (5 points)
  python -m facekp_jax.predict --workdir=W --csv=test.csv --lookup=IdLookupTable.csv \
      --out=submission.csv
  python -m facekp_jax.predict --workdir=W --csv=test.csv --out=predictions.csv
  python -m facekp_jax.predict --workdir=W [--out_dir=DIR] [--out=faces.csv] photo.jpg DIR ...
  python -m facekp_jax.predict --workdir=W --nodetect [--crop=none|center] face1.png ...

Common flags: ``--checkpoint=best|latest`` (default best by validation RMSE) and
``--tta/--notta`` (test-time augmentation; default: the run's ``config.tta``). What each
writes: ``serving.submission`` (``--csv``) and ``serving.pictures`` (image files).
"""

import os

from absl import flags

from facekp_jax import cli
from facekp_jax.core import errors, host_memory
from facekp_jax.serving import detect, images, pictures, predictor, submission


def main(argv=None) -> None:
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (core/host_memory.py).
  fv = cli.command_flags()
  cli.define_model_flags(fv, shipped=True)
  flags.DEFINE_string("csv", None, "Kaggle test.csv-layout file (ImageId, Image)", flag_values=fv)
  flags.DEFINE_string("lookup", None, "Kaggle IdLookupTable.csv: write a submission",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "output CSV: with --csv, the predictions; with photos, one "
                      "row per face (default <out_dir>/faces.csv)", flag_values=fv)
  flags.DEFINE_bool("detect", True, "photos: find the faces (default); --nodetect: one face "
                    "per picture", flag_values=fv)
  flags.DEFINE_bool("refine", True, "photos: crop each face again from the first pass's "
                    "keypoints", flag_values=fv)
  flags.DEFINE_float("min_face_score", detect.MIN_FACE_SCORE, "photos: drop the faces whose "
                     "keypoints' mean confidence is under this (heatmap models; 0 keeps every "
                     "face the detector finds)", lower_bound=0.0, upper_bound=1.0, flag_values=fv)
  flags.DEFINE_enum("crop", None, pictures.CROPS, "--nodetect: pad to a square (none, default) "
                    "or keep the centre square", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "pictures: where overlays go (default: the workdir; "
                      "with the shipped model, the current folder)", flag_values=fv)
  flags.DEFINE_bool("allow_untrained", False, "--lookup: submit keypoints the run had no labels "
                    "for (refused otherwise)", flag_values=fv)
  args = cli.parse(fv, "python -m facekp_jax.predict [flags] [image files or folders ...]",
                   "Predict keypoints with a trained workdir: a Kaggle test file, or pictures.",
                   argv, positional=True)
  cli.quiet_libraries()
  cli.before_jax()
  if bool(fv.csv) == bool(args):
    cli.usage_error("give either --csv or image files")
  if fv.csv and not fv.out:
    cli.usage_error("--csv needs --out")
  if fv.csv and (fv.crop or fv.out_dir):
    cli.usage_error("--crop and --out_dir apply to image files, not --csv")
  if args and fv.lookup:
    cli.usage_error("--lookup applies to --csv, not image files")
  if fv.allow_untrained and not fv.lookup:
    cli.usage_error("--allow_untrained applies to --lookup (a submission)")
  if args and not fv.detect and fv.out:
    cli.usage_error("--out applies to --csv or to photos, not with --nodetect")
  if fv.detect and fv.crop:
    cli.usage_error("--crop applies with --nodetect (detected faces get aligned crops)")
  if fv.out and not os.path.isdir(os.path.dirname(os.path.abspath(fv.out))):
    cli.usage_error(f"--out {fv.out}: its folder does not exist")
  with cli.user_errors():
    for path in [fv.csv, fv.lookup] if fv.csv else []:
      if path and not os.path.isfile(path):
        raise errors.DataError(f"{path}: file not found")
    paths = images.expand_paths(args)  # Check them before the model.
    lookup = submission.read_lookup(fv.lookup) if fv.lookup else None  # Check it before the model.
    model = predictor.load(fv.workdir, fv.checkpoint)
    tta = cli.tta(fv, model)
    out_dir = fv.out_dir or fv.workdir or "."
    if fv.csv:
      submission.run_csv(model, fv.csv, fv.out, fv.lookup, tta, lookup, fv.allow_untrained)
    elif fv.detect:
      pictures.run_photos(model, paths, out_dir, tta, fv.refine, fv.out, fv.min_face_score)
    else:
      pictures.run_pictures(model, paths, out_dir, fv.crop or "none", tta)


if __name__ == "__main__":
  cli.run_as_process(main)

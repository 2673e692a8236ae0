"""Keypoints from a trained workdir: Kaggle submissions, prediction files, your own pictures.

  python -m facekp_jax.predict --workdir=W --csv=test.csv --lookup=IdLookupTable.csv \
      --out=submission.csv
  python -m facekp_jax.predict --workdir=W --csv=test.csv --out=predictions.csv
  python -m facekp_jax.predict --workdir=W [--out_dir=DIR] [--out=faces.csv] photo.jpg DIR ...
  python -m facekp_jax.predict --workdir=W --nodetect [--crop=none|center] face1.png ...

Common flags: ``--checkpoint=best|latest`` (default best by validation RMSE) and
``--tta/--notta`` (flip test-time augmentation; default: the run's ``config.tta``).

With ``--lookup``, ``--out`` is Kaggle's submission: header ``RowId,Location``,
one row per row of the lookup table, in its order. Without it, ``--out`` has
``ImageId`` and the 30 keypoint columns, one row per face of ``--csv``. Written
coordinates are clipped to the frame, [0, 96]; files appear atomically.

Keypoints the run never had labels for (``trained_keypoints.json``: a training file that
labels 5 of the 15, say) are not predictions: their cells stay empty in every CSV, they are
left out of the JSON, the overlays and the printed lines, and a submission whose lookup
table asks for one is refused unless ``--allow_untrained`` (then the model's untrained
guesses are written, clipped like the rest).

Photos (image files, or folders of them): every face OpenCV's detector finds is cropped to
the training framing, read (``--refine``, the default; ``--norefine`` once: twice, the second crop upright and to
scale from the first pass's keypoints; see ``facekp_jax.faces``) and mapped back into the photo's
pixels. Each photo with faces gets an overlay, ``<out_dir>/<stem>_keypoints.png`` (default
``out_dir``: the workdir); every face is a row of ``--out`` (default ``<out_dir>/faces.csv``:
file, face index, box, detector score, the 30 coordinates, unclipped) and an entry of the JSON
beside it (``faces.json``). A photo without a face is reported in one line and the others go on.

``--nodetect``: each picture is one face, fitted whole into 96x96 (``--crop``; see
``facekp_jax.pictures``); keypoints are printed in the picture's pixels, with an overlay each.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from absl import flags

from facekp_jax import cli, data, faces, inference, keypoints, pictures, plots
from facekp_jax import workdir as workdir_lib
from facekp_jax.ops import host_memory

SIZE = keypoints.IMAGE_SIZE
LOOKUP_COLUMNS = ("RowId", keypoints.ID_COLUMN, "FeatureName")


# ------------------------------------------------------------------------- Kaggle test files


def clip_locations(values: np.ndarray) -> np.ndarray:
  """Clips coordinates to Kaggle's frame, [0, 96]."""
  return np.clip(values, 0.0, float(SIZE))


def predict_test_csv(model: inference.Model, path: str,
                     tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(image_ids, (N, 30) pixel predictions) of a Kaggle test.csv-layout file, streamed.

  Raises:
    data.DataError: a malformed file or a repeated ImageId, naming the row.
  """
  ids, predictions = [], []
  for chunk_ids, images in data.read_test_chunks(path, 8 * model.trainer.eval_batch_size):
    ids.append(chunk_ids)
    predictions.append(model.predict(images, tta=tta))
  ids = np.concatenate(ids)
  repeated = pd.Index(ids).duplicated()
  if repeated.any():
    row = int(np.argmax(repeated))
    first = int(np.flatnonzero(ids == ids[row])[0])
    raise data.DataError(f"{path}: row {row + 1}: ImageId {ids[row]} repeats row {first + 1}")
  return ids, np.concatenate(predictions)


def read_lookup(path: str) -> pd.DataFrame:
  """Reads Kaggle's IdLookupTable.csv layout: RowId, ImageId, FeatureName (Location unused).

  Returns:
    The table in file order, ``RowId`` as written, ``ImageId`` as int64 and ``column``, the
    index of ``FeatureName`` in ``keypoints.COLUMNS``.

  Raises:
    data.DataError: missing columns, a non-numeric ImageId or an unknown FeatureName.
  """
  frames = [f for _, f in data.read_csv_chunks(path, LOOKUP_COLUMNS, chunk_rows=1 << 16)]
  frame = pd.concat(frames, ignore_index=True)
  ids = pd.to_numeric(frame[keypoints.ID_COLUMN].str.strip(), errors="coerce").to_numpy()
  bad = ~np.isfinite(ids) | (ids != np.round(ids))
  if bad.any():
    row = int(np.argmax(bad))
    raise data.DataError(f"{path}: row {row + 1}: ImageId is not a whole number: "
                         f"{frame[keypoints.ID_COLUMN].iloc[row]!r:.40}")
  names = frame["FeatureName"].str.strip()
  column = names.map({name: j for j, name in enumerate(keypoints.COLUMNS)})
  if column.isna().any():
    row = int(np.argmax(column.isna().to_numpy()))
    raise data.DataError(f"{path}: row {row + 1}: FeatureName {names.iloc[row]!r:.40} is not "
                         "one of the 30 keypoint columns")
  return pd.DataFrame({"RowId": frame["RowId"].str.strip(),
                       keypoints.ID_COLUMN: ids.astype(np.int64),
                       "column": column.to_numpy(np.int64)})


def untrained_lookup_rows(lookup: pd.DataFrame, trained: np.ndarray,
                          lookup_path: str = "lookup") -> str | None:
  """The one-line refusal of a lookup table that asks for untrained keypoints (None: none)."""
  asked = trained[lookup["column"].to_numpy()] == 0
  if not asked.any():
    return None
  names = sorted({keypoints.COLUMNS[c] for c in lookup["column"].to_numpy()[asked]})
  return (f"{lookup_path}: row {int(np.argmax(asked)) + 1}: {int(asked.sum())} rows ask for "
          f"keypoints this model was never trained on ({', '.join(names[:4])}"
          f"{', ...' if len(names) > 4 else ''}); train on labels for them, or pass "
          "--allow_untrained to submit the untrained guesses")


def submission(lookup: pd.DataFrame, ids: np.ndarray, predictions: np.ndarray,
               lookup_path: str = "lookup", test_path: str = "test file") -> pd.DataFrame:
  """Kaggle's submission: ``RowId, Location`` for every lookup row, in order, clipped.

  Raises:
    data.DataError: a lookup row whose ImageId is not among ``ids``.
  """
  rows = pd.Index(ids).get_indexer(lookup[keypoints.ID_COLUMN])
  if (rows < 0).any():
    r = int(np.argmax(rows < 0))
    raise data.DataError(f"{lookup_path}: row {r + 1}: ImageId "
                         f"{lookup[keypoints.ID_COLUMN].iloc[r]} is not in {test_path}")
  locations = clip_locations(np.asarray(predictions, np.float64)[rows, lookup["column"].to_numpy()])
  return pd.DataFrame({"RowId": lookup["RowId"].to_numpy(), "Location": locations})


def prediction_table(ids: np.ndarray, predictions: np.ndarray) -> pd.DataFrame:
  """``ImageId`` and the 30 keypoint columns, clipped to the frame (NaN: an empty cell)."""
  frame = pd.DataFrame(clip_locations(np.asarray(predictions, np.float64)),
                       columns=list(keypoints.COLUMNS))
  frame.insert(0, keypoints.ID_COLUMN, ids)
  return frame


def write_csv(path: str, frame: pd.DataFrame) -> None:
  """Writes ``frame`` without its index, atomically (4 decimals: 1e-4 px)."""
  text = frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")
  workdir_lib.atomic_write(path, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------- command line


def run_csv(model: inference.Model, path: str, out: str, lookup_path: str | None = None,
            tta: bool = False, lookup: pd.DataFrame | None = None,
            allow_untrained: bool = False) -> None:
  """Writes a submission (with a lookup table) or a 30-column prediction file to ``out``.

  ``lookup`` is ``read_lookup(lookup_path)`` when the caller has already read it.

  Raises:
    data.DataError: bad files, or a lookup table asking for untrained keypoints (unless
      ``allow_untrained``); nothing is written then.
  """
  if lookup is None and lookup_path:
    lookup = read_lookup(lookup_path)
  refusal = None if lookup is None else untrained_lookup_rows(lookup, model.trained, lookup_path)
  if refusal and not allow_untrained:
    raise data.DataError(refusal)
  ids, predictions = predict_test_csv(model, path, tta)
  if lookup is not None:
    frame = submission(lookup, ids, predictions, lookup_path, path)
  else:
    frame = prediction_table(ids, model.only_trained(predictions))
  write_csv(out, frame)
  what = "submission rows" if lookup is not None else "faces"
  print(f"{model.describe(tta)}\nwrote {len(frame)} {what} to {out}")
  _note_untrained(model, "submitted anyway" if lookup is not None else "left empty")


def _note_untrained(model: inference.Model, what: str) -> None:
  """One line naming the keypoints the run never trained on, when there are."""
  untrained = model.untrained_names()
  if untrained:
    print(f"untrained keypoints {what}: {', '.join(untrained)}")


def run_pictures(model: inference.Model, paths: list[str], out_dir: str, crop: str = "none",
                 tta: bool = False) -> list[pictures.Picture]:
  """Prints each picture's keypoints and writes its overlay into ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  print(model.describe(tta))
  _note_untrained(model, "not shown")
  done = []
  for p in pictures.predict_pictures(model, paths, crop, tta):
    p.keypoints = model.only_trained(p.keypoints)
    overlay = os.path.join(out_dir, os.path.splitext(os.path.basename(p.path))[0]
                           + "_keypoints.png")
    plots.save_figure(pictures.plot_picture(p), overlay)
    print(f"{pictures.keypoint_lines(p, crop)}\n  overlay: {overlay}")
    p.preview = None  # Keep only the numbers.
    done.append(p)
  return done


PHOTO_COLUMNS = ("file", "face", "box_x", "box_y", "box_width", "box_height", "score")


def photo_table(photos: list[pictures.Photo]) -> pd.DataFrame:
  """One row per face: file, face index, box (x, y, width, height), score, 30 coordinates."""
  rows = [(p.path, i, *k.face.box, k.face.score, *k.keypoints)
          for p in photos for i, k in enumerate(p.faces)]
  frame = pd.DataFrame(rows, columns=[*PHOTO_COLUMNS, *keypoints.COLUMNS])
  return frame.astype({"face": np.int64})


def photo_record(p: pictures.Photo) -> dict:
  """A photo's JSON entry: its size and, per face, box, score, crop map and keypoints."""
  return {"file": p.path, "width": p.width, "height": p.height, "faces": [
      {"face": i, "box": [round(float(v), 2) for v in k.face.box],
       "score": round(k.face.score, 4),
       "crop_transform": k.transform.tolist(),
       "keypoints": {name: [round(float(x), 4), round(float(y), 4)] for name, (x, y) in
                     zip(keypoints.KEYPOINT_NAMES, k.keypoints.reshape(-1, 2))
                     if np.isfinite(x)}}  # NaN: untrained, left out.
      for i, k in enumerate(p.faces)]}


def run_photos(model: inference.Model, paths: list[str], out_dir: str, tta: bool = False,
               refine: bool = True, out: str | None = None) -> list[pictures.Photo]:
  """Finds and reads every face of each photo; writes overlays, ``out`` (CSV) and its JSON.

  ``out`` defaults to ``<out_dir>/faces.csv``; the JSON is ``out`` with ``.json`` for ``.csv``.
  """
  os.makedirs(out_dir, exist_ok=True)
  out = out or os.path.join(out_dir, "faces.csv")
  print(f"{model.describe(tta)}, {faces.CASCADE}, refine {'on' if refine else 'off'}")
  _note_untrained(model, "left out")
  done = []

  def read(images):  # Untrained keypoints are NaN from the start: refine fits trained ones.
    return model.only_trained(model.predict(images, tta=tta))

  for p in pictures.predict_photos(read, paths, refine):
    print(pictures.face_lines(p))
    if p.faces:
      overlay = os.path.join(out_dir, os.path.splitext(os.path.basename(p.path))[0]
                             + "_keypoints.png")
      plots.save_figure(pictures.plot_photo(p), overlay)
      print(f"  overlay: {overlay}")
    p.preview = None  # Keep only the numbers.
    done.append(p)
  table = photo_table(done)
  write_csv(out, table)
  json_path = os.path.splitext(out)[0] + ".json"
  workdir_lib.write_json(json_path, {
      "workdir": os.path.abspath(model.workdir), "checkpoint": model.checkpoint,
      "step": model.step, "tta": tta, "refine": refine, "detector": faces.CASCADE,
      "photos": [photo_record(p) for p in done]})
  without = sum(not p.faces for p in done)
  print(f"{len(table)} faces in {len(done) - without} of {len(done)} photos: wrote {out}, "
        f"{json_path}")
  return done


def main(argv=None) -> None:
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (ops/host_memory.py).
  fv = cli.command_flags()
  cli.define_model_flags(fv)
  flags.DEFINE_string("csv", None, "Kaggle test.csv-layout file (ImageId, Image)", flag_values=fv)
  flags.DEFINE_string("lookup", None, "Kaggle IdLookupTable.csv: write a submission",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "output CSV: with --csv, the predictions; with photos, one "
                      "row per face (default <out_dir>/faces.csv)", flag_values=fv)
  flags.DEFINE_bool("detect", True, "photos: find the faces (default); --nodetect: one face "
                    "per picture", flag_values=fv)
  flags.DEFINE_bool("refine", True, "photos: crop each face again from the first pass's "
                    "keypoints", flag_values=fv)
  flags.DEFINE_enum("crop", None, pictures.CROPS, "--nodetect: pad to a square (none, default) "
                    "or keep the centre square", flag_values=fv)
  flags.DEFINE_string("out_dir", None, "pictures: where overlays go (default: the workdir)",
                      flag_values=fv)
  flags.DEFINE_bool("allow_untrained", False, "--lookup: submit keypoints the run had no labels "
                    "for (refused otherwise)", flag_values=fv)
  args = cli.parse(fv, "python -m facekp_jax.predict [flags] [image files or folders ...]",
                   "Predict keypoints with a trained workdir: a Kaggle test file, or pictures.",
                   argv, positional=True)
  cli.quiet_libraries()
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
        raise data.DataError(f"{path}: file not found")
    paths = pictures.expand_paths(args)  # Check them before the model.
    lookup = read_lookup(fv.lookup) if fv.lookup else None  # Check it before the model.
    model = inference.load(fv.workdir, fv.checkpoint)
    tta = cli.tta(fv, model.config)
    out_dir = fv.out_dir or fv.workdir
    if fv.csv:
      run_csv(model, fv.csv, fv.out, fv.lookup, tta, lookup, fv.allow_untrained)
    elif fv.detect:
      run_photos(model, paths, out_dir, tta, fv.refine, fv.out)
    else:
      run_pictures(model, paths, out_dir, fv.crop or "none", tta)


if __name__ == "__main__":
  main()

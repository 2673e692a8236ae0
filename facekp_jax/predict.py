"""Keypoints from a trained workdir: Kaggle submissions, prediction files, your own pictures.

  python -m facekp_jax.predict --workdir=W --csv=test.csv --lookup=IdLookupTable.csv \
      --out=submission.csv
  python -m facekp_jax.predict --workdir=W --csv=test.csv --out=predictions.csv
  python -m facekp_jax.predict --workdir=W [--crop=none|center] [--out_dir=DIR] face1.png ...

Common flags: ``--checkpoint=best|latest`` (default best by validation RMSE) and
``--tta/--no-tta`` (flip test-time augmentation; default: the run's ``config.tta``).

With ``--lookup``, ``--out`` is Kaggle's submission: header ``RowId,Location``,
one row per row of the lookup table, in its order. Without it, ``--out`` has
``ImageId`` and the 30 keypoint columns, one row per face of ``--csv``. Written
coordinates are clipped to the frame, [0, 96]; files appear atomically.

Pictures (PNG; JPEG and others through Pillow, which matplotlib brings) are
turned grey (ITU-R 601 luma), made square, and resampled to 96x96 (area
averaging when shrinking, linear interpolation when enlarging). The model knows
Kaggle's framing only: an upright face filling most of the frame, eyes about
36 px apart (3/8 of the width) on a line about 38 px (2/5 of the height) from
the top, centred. Crop your pictures like that for good results:

  --crop=none    (default) pad the short side to a square (repeating the edge
                 pixels), so all of the picture is kept undistorted.
  --crop=center  keep the central square of the picture.

Keypoints are printed in the original picture's pixels (pixel (row i, column j)
centred at (x=j, y=i)), and each picture gets an overlay,
``<out_dir>/<stem>_keypoints.png`` (default ``out_dir``: the workdir), showing
the keypoints and the square the model saw (dashed). EXIF rotation is not
applied: a sideways photo stays sideways.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from facekp_jax import data, inference, keypoints, report

SIZE = keypoints.IMAGE_SIZE
CROPS = ("none", "center")
LOOKUP_COLUMNS = ("RowId", keypoints.ID_COLUMN, "FeatureName")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as Pillow's "L" mode.
_PREVIEW = 640  # Longest side of the picture kept for the overlay.


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
  """``ImageId`` and the 30 keypoint columns, clipped to the frame."""
  frame = pd.DataFrame(clip_locations(np.asarray(predictions, np.float64)),
                       columns=list(keypoints.COLUMNS))
  frame.insert(0, keypoints.ID_COLUMN, ids)
  return frame


def write_csv(path: str, frame: pd.DataFrame) -> None:
  """Writes ``frame`` without its index, atomically (4 decimals: 1e-4 px)."""
  text = frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")
  report._atomic_write(path, lambda f: f.write(text.encode()))  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------- pictures


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of a 1-D resize between pixel grids that span the same extent.

  Shrinking averages the input pixels each output pixel covers (area, by overlap);
  enlarging interpolates linearly between the pixel centres (edges clamped).
  """
  scale = n_in / n_out
  j = np.arange(n_in)[None, :]
  if scale >= 1:
    lo = np.arange(n_out)[:, None] * scale
    weights = np.clip(np.minimum(lo + scale, j + 1) - np.maximum(lo, j), 0.0, None)
  else:
    centre = np.clip((np.arange(n_out)[:, None] + 0.5) * scale - 0.5, 0, n_in - 1)
    weights = np.maximum(0.0, 1.0 - np.abs(centre - j))
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes an (H, W) or (H, W, C) float image to (height, width[, C])."""
  rows = _resample_matrix(image.shape[0], height)
  cols = _resample_matrix(image.shape[1], width)
  out = np.tensordot(rows, np.asarray(image, np.float32), axes=(1, 0))  # (height, W, ...)
  out = np.tensordot(cols, np.moveaxis(out, 1, 0), axes=(1, 0))  # (width, height, ...)
  return np.moveaxis(out, 0, 1).astype(np.float32)


def read_picture(path: str) -> np.ndarray:
  """An image file -> float32 (H, W) grey or (H, W, 3) colour in [0, 1] (alpha dropped).

  Raises:
    data.DataError: a missing or undecodable file.
  """
  if not os.path.isfile(path):
    raise data.DataError(f"{path}: file not found")
  try:
    pixels = matplotlib.image.imread(path)
  except Exception as e:  # pylint: disable=broad-except  # Any decoder failure is the file's.
    detail = " ".join(str(e).split())[:120] or type(e).__name__
    raise data.DataError(f"{path}: cannot be read as an image ({detail})") from None
  if np.issubdtype(pixels.dtype, np.integer):
    pixels = pixels / float(np.iinfo(pixels.dtype).max)
  pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
  if pixels.ndim == 3 and pixels.shape[2] in (1, 2):
    pixels = pixels[:, :, 0]  # Grey (+ alpha).
  elif pixels.ndim == 3 and pixels.shape[2] in (3, 4):
    pixels = pixels[:, :, :3]
  if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) < 1:
    raise data.DataError(f"{path}: unsupported image shape {pixels.shape}")
  return pixels


def to_grey(picture: np.ndarray) -> np.ndarray:
  return picture if picture.ndim == 2 else (picture @ _LUMA).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Framing:
  """Where the model's 96x96 input lies in a picture: a ``side``-pixel square whose top-left
  pixel is picture pixel (``left``, ``top``) (negative where the square is padding)."""

  left: int
  top: int
  side: int

  def to_picture(self, coords: np.ndarray) -> np.ndarray:
    """(..., 30) coordinates in the 96x96 frame -> the picture's pixels (centre convention)."""
    out = (np.asarray(coords, np.float64) + 0.5) * (self.side / SIZE) - 0.5
    out[..., 0::2] += self.left
    out[..., 1::2] += self.top
    return out


def fit(grey: np.ndarray, crop: str = "none") -> tuple[np.ndarray, Framing]:
  """A grey (H, W) picture -> the model's (96, 96, 1) input and where it lies in the picture.

  ``crop="none"`` pads the short side to a square with the edge pixels (centred);
  ``crop="center"`` keeps the central square.
  """
  h, w = grey.shape
  if crop == "center":
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = grey[top:top + side, left:left + side]
  elif crop == "none":
    side = max(h, w)
    top, left = -((side - h) // 2), -((side - w) // 2)
    square = np.pad(grey, ((-top, side - h + top), (-left, side - w + left)), mode="edge")
  else:
    raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
  return resize(square, SIZE, SIZE)[..., None], Framing(left, top, side)


@dataclasses.dataclass
class Picture:
  """One picture's prediction: ``keypoints`` (30,) in the picture's pixels."""

  path: str
  height: int
  width: int
  framing: Framing
  keypoints: np.ndarray
  preview: np.ndarray  # The picture, at most _PREVIEW pixels on its longest side.


def predict_pictures(model: inference.Model, paths: list[str], crop: str = "none",
                     tta: bool = False, chunk: int = 64) -> Iterator[Picture]:
  """Predicts the keypoints of image files in batches of ``chunk`` pictures.

  Raises:
    data.DataError: a missing or undecodable file.
  """
  for start in range(0, len(paths), chunk):
    inputs, pictures = [], []
    for path in paths[start:start + chunk]:
      picture = read_picture(path)
      image, framing = fit(to_grey(picture), crop)
      inputs.append(image)
      h, w = picture.shape[:2]
      shrink = min(1.0, _PREVIEW / max(h, w))
      preview = resize(picture, max(1, round(h * shrink)), max(1, round(w * shrink)))
      pictures.append(Picture(path, h, w, framing, np.empty(0), preview))
    predictions = model.predict(np.stack(inputs), tta=tta)
    for p, prediction in zip(pictures, predictions):
      p.keypoints = p.framing.to_picture(prediction)
      yield p


def plot_picture(p: Picture):
  """The picture with its predicted keypoints (red x) and the model's square (dashed)."""
  scale = 6.0 / max(p.height, p.width)
  fig, ax = plt.subplots(figsize=(max(2.0, p.width * scale), max(2.0, p.height * scale)))
  extent = (-0.5, p.width - 0.5, p.height - 0.5, -0.5)
  ax.imshow(p.preview, cmap="gray" if p.preview.ndim == 2 else None, vmin=0, vmax=1,
            extent=extent, interpolation="antialiased")
  f = p.framing
  ax.add_patch(plt.Rectangle((f.left - 0.5, f.top - 0.5), f.side, f.side, fill=False, ls="--",
                             ec="yellow", lw=1))
  xy = p.keypoints.reshape(-1, 2)
  ax.plot(xy[:, 0], xy[:, 1], "x", ms=6, color="red", mew=1.5)
  ax.set_xlim(min(extent[0], f.left - 0.5), max(extent[1], f.left + f.side - 0.5))
  ax.set_ylim(max(extent[2], f.top + f.side - 0.5), min(extent[3], f.top - 0.5))
  ax.axis("off")
  ax.set_title(os.path.basename(p.path), fontsize=9)
  return fig


def keypoint_lines(p: Picture, crop: str) -> str:
  lines = [f"{p.path} ({p.width}x{p.height}, crop={crop}): x, y in the picture's pixels"]
  for name, (x, y) in zip(keypoints.KEYPOINT_NAMES, p.keypoints.reshape(-1, 2)):
    lines.append(f"  {name:<26}{x:9.1f}{y:9.1f}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def run_csv(model: inference.Model, path: str, out: str, lookup_path: str | None = None,
            tta: bool = False, lookup: pd.DataFrame | None = None) -> None:
  """Writes a submission (with a lookup table) or a 30-column prediction file to ``out``.

  ``lookup`` is ``read_lookup(lookup_path)`` when the caller has already read it.
  """
  if lookup is None and lookup_path:
    lookup = read_lookup(lookup_path)
  ids, predictions = predict_test_csv(model, path, tta)
  if lookup is not None:
    frame = submission(lookup, ids, predictions, lookup_path, path)
  else:
    frame = prediction_table(ids, predictions)
  write_csv(out, frame)
  what = "submission rows" if lookup is not None else "faces"
  print(f"{model.describe(tta)}\nwrote {len(frame)} {what} to {out}")


def run_pictures(model: inference.Model, paths: list[str], out_dir: str, crop: str = "none",
                 tta: bool = False) -> list[Picture]:
  """Prints each picture's keypoints and writes its overlay into ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  print(model.describe(tta))
  done = []
  for p in predict_pictures(model, paths, crop, tta):
    overlay = os.path.join(out_dir, os.path.splitext(os.path.basename(p.path))[0]
                           + "_keypoints.png")
    report.save_figure(plot_picture(p), overlay)
    print(f"{keypoint_lines(p, crop)}\n  overlay: {overlay}")
    p.preview = None  # Keep only the numbers.
    done.append(p)
  return done


def main(argv=None) -> None:
  parser = inference.ArgumentParser(
      prog="python -m facekp_jax.predict",
      description="Predict keypoints with a trained workdir: a Kaggle test file, or pictures.")
  inference.add_model_arguments(parser)
  parser.add_argument("--csv", help="Kaggle test.csv-layout file (ImageId, Image)")
  parser.add_argument("--lookup", help="Kaggle IdLookupTable.csv: write a submission")
  parser.add_argument("--out", help="output CSV (with --csv)")
  parser.add_argument("--crop", choices=CROPS, default=None,
                      help="pictures: pad to a square (none, default) or keep the centre square")
  parser.add_argument("--out_dir", help="pictures: where overlays go (default: the workdir)")
  parser.add_argument("pictures", nargs="*", help="image files (PNG, JPEG, ...)")
  args = parser.parse_args(argv)
  inference.quiet_libraries()
  if bool(args.csv) == bool(args.pictures):
    parser.error("give either --csv or image files")
  if args.csv and not args.out:
    parser.error("--csv needs --out")
  if args.csv and (args.crop or args.out_dir):
    parser.error("--crop and --out_dir apply to image files, not --csv")
  if args.pictures and (args.lookup or args.out):
    parser.error("--lookup and --out apply to --csv, not image files")
  if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
    parser.error(f"--out {args.out}: its folder does not exist")
  try:
    for path in [args.csv, args.lookup] if args.csv else args.pictures:
      if path and not os.path.isfile(path):
        raise data.DataError(f"{path}: file not found")
    lookup = read_lookup(args.lookup) if args.lookup else None  # Check it before the model.
    model = inference.load(args.workdir, args.checkpoint)
    tta = model.config.get("tta", False) if args.tta is None else args.tta
    if args.csv:
      run_csv(model, args.csv, args.out, args.lookup, tta, lookup)
    else:
      run_pictures(model, args.pictures, args.out_dir or args.workdir, args.crop or "none", tta)
  except inference.USER_ERRORS as e:
    inference.fail(e)
  except OSError as e:
    inference.fail(f"{e.filename or ''}: {e.strerror or e}")


if __name__ == "__main__":
  main()

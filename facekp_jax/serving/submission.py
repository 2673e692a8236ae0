"""Kaggle test files through a trained model: a submission (with the lookup table) or predictions.

With a lookup table (``IdLookupTable.csv``), ``run_csv`` writes Kaggle's submission: header
``RowId,Location``, one row per row of the lookup table, in its order; a table that asks for
keypoints the model's layout lacks (a 5-point model asked for Kaggle's 15) is refused, naming
them. Without it, ``ImageId`` and the layout's keypoint columns, one row per face of the test
file. Written coordinates are clipped
to the frame, [0, 96]; files appear atomically. Keypoints the run never had labels for
(``trained_keypoints.json``) stay empty in the prediction file, and a submission whose lookup
table asks for one is refused unless ``allow_untrained`` (then the model's untrained guesses
are written, clipped like the rest).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from tqdm import tqdm

from facekp_jax.core import files, keypoints
from facekp_jax.core.errors import DataError
from facekp_jax.data import kaggle
from facekp_jax.serving import predictor

SIZE = keypoints.IMAGE_SIZE
LOOKUP_COLUMNS = ("RowId", keypoints.ID_COLUMN, "FeatureName")


# ------------------------------------------------------------------------- Kaggle test files


def clip_locations(values: np.ndarray) -> np.ndarray:
  """Clips coordinates to Kaggle's frame, [0, 96]."""
  return np.clip(values, 0.0, float(SIZE))


def predict_test_csv(model: predictor.Predictor, path: str,
                     tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(image_ids, (N, 2K) pixel predictions) of a Kaggle test.csv-layout file, streamed.

  Raises:
    DataError: a malformed file or a repeated ImageId, naming the row.
  """
  ids, predictions = [], []
  with tqdm(unit=" faces", desc=f"predicting {os.path.basename(path)}", leave=False,
            disable=None) as bar:  # On a terminal only.
    for chunk_ids, images in kaggle.read_test_chunks(path, 8 * model.eval_batch_size):
      ids.append(chunk_ids)
      predictions.append(model.predict(images, tta=tta))
      bar.update(len(chunk_ids))
  ids = np.concatenate(ids)
  repeated = pd.Index(ids).duplicated()
  if repeated.any():
    row = int(np.argmax(repeated))
    first = int(np.flatnonzero(ids == ids[row])[0])
    raise DataError(f"{path}: row {row + 1}: ImageId {ids[row]} repeats row {first + 1}")
  return ids, np.concatenate(predictions)


def read_lookup(path: str) -> pd.DataFrame:
  """Reads Kaggle's IdLookupTable.csv layout: RowId, ImageId, FeatureName (Location unused).

  Returns:
    The table in file order, ``RowId`` and ``FeatureName`` as written (stripped), ``ImageId``
    as int64; ``lookup_columns`` maps the names onto a model's outputs.

  Raises:
    DataError: missing columns, a non-numeric ImageId, or a FeatureName of no layout.
  """
  frames = [f for _, f in kaggle.read_csv_chunks(path, LOOKUP_COLUMNS, chunk_rows=1 << 16)]
  frame = pd.concat(frames, ignore_index=True)
  ids = pd.to_numeric(frame[keypoints.ID_COLUMN].str.strip(), errors="coerce").to_numpy()
  bad = ~np.isfinite(ids) | (ids != np.round(ids))
  if bad.any():
    row = int(np.argmax(bad))
    raise DataError(f"{path}: row {row + 1}: ImageId is not a whole number: "
                         f"{frame[keypoints.ID_COLUMN].iloc[row]!r:.40}")
  names = frame["FeatureName"].str.strip()
  known = {c for k in keypoints.LAYOUTS.values() for c in k.columns}
  unknown = ~names.isin(known).to_numpy()
  if unknown.any():
    row = int(np.argmax(unknown))
    raise DataError(f"{path}: row {row + 1}: FeatureName {names.iloc[row]!r:.40} is no "
                    "keypoint column of a built-in layout")
  return pd.DataFrame({"RowId": frame["RowId"].str.strip(),
                       keypoints.ID_COLUMN: ids.astype(np.int64), "FeatureName": names})


def lookup_columns(lookup: pd.DataFrame, layout: keypoints.Layout,
                   path: str = "lookup") -> np.ndarray:
  """Each lookup row's index into ``layout.columns`` (a model's outputs).

  Raises:
    DataError: rows asking for keypoints ``layout`` lacks, all named in one line.
  """
  names = lookup["FeatureName"]
  column = names.map({name: j for j, name in enumerate(layout.columns)})
  lacking = column.isna().to_numpy()
  if lacking.any():
    missing = sorted({n.rsplit("_", 1)[0] for n in names[lacking]})
    raise DataError(f"{path}: row {int(np.argmax(lacking)) + 1}: {int(lacking.sum())} rows ask "
                    f"for keypoints that this model's layout {layout.describe()} lacks "
                    f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); use a "
                    "model of a layout that has them")
  return column.to_numpy(np.int64)


def untrained_lookup_rows(lookup: pd.DataFrame, trained: np.ndarray, columns: np.ndarray,
                          lookup_path: str = "lookup") -> str | None:
  """The one-line refusal of a lookup table that asks for untrained keypoints (None: none);
  ``columns``: its rows' output indices (``lookup_columns``)."""
  asked = trained[columns] == 0
  if not asked.any():
    return None
  names = sorted(set(lookup["FeatureName"].to_numpy()[asked]))
  return (f"{lookup_path}: row {int(np.argmax(asked)) + 1}: {int(asked.sum())} rows ask for "
          f"keypoints this model was never trained on ({', '.join(names[:4])}"
          f"{', ...' if len(names) > 4 else ''}); train on labels for them, or pass "
          "--allow_untrained to submit the untrained guesses")


def submission(lookup: pd.DataFrame, columns: np.ndarray, ids: np.ndarray,
               predictions: np.ndarray, lookup_path: str = "lookup",
               test_path: str = "test file") -> pd.DataFrame:
  """Kaggle's submission: ``RowId, Location`` for every lookup row, in order, clipped;
  ``columns``: the rows' output indices (``lookup_columns``).

  Raises:
    DataError: a lookup row whose ImageId is not among ``ids``.
  """
  rows = pd.Index(ids).get_indexer(lookup[keypoints.ID_COLUMN])
  if (rows < 0).any():
    r = int(np.argmax(rows < 0))
    raise DataError(f"{lookup_path}: row {r + 1}: ImageId "
                         f"{lookup[keypoints.ID_COLUMN].iloc[r]} is not in {test_path}")
  locations = clip_locations(np.asarray(predictions, np.float64)[rows, columns])
  return pd.DataFrame({"RowId": lookup["RowId"].to_numpy(), "Location": locations})


def prediction_table(ids: np.ndarray, predictions: np.ndarray,
                     columns: tuple[str, ...] = keypoints.DEFAULT.columns) -> pd.DataFrame:
  """``ImageId`` and the keypoint ``columns``, clipped to the frame (NaN: an empty cell)."""
  frame = pd.DataFrame(clip_locations(np.asarray(predictions, np.float64)),
                       columns=list(columns))
  frame.insert(0, keypoints.ID_COLUMN, ids)
  return frame


def write_csv(path: str, frame: pd.DataFrame) -> None:
  """Writes ``frame`` without its index, atomically (4 decimals: 1e-4 px)."""
  text = frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")
  files.atomic_write(path, lambda f: f.write(text.encode()))


def run_csv(model: predictor.Predictor, path: str, out: str, lookup_path: str | None = None,
            tta: bool = False, lookup: pd.DataFrame | None = None,
            allow_untrained: bool = False) -> None:
  """Writes a submission (with a lookup table) or a prediction file (the model's layout's
  columns) to ``out``.

  ``lookup`` is ``read_lookup(lookup_path)`` when the caller has already read it.

  Raises:
    DataError: bad files, or a lookup table asking for untrained keypoints (unless
      ``allow_untrained``); nothing is written then.
  """
  if lookup is None and lookup_path:
    lookup = read_lookup(lookup_path)
  refusal = columns = None
  if lookup is not None:
    columns = lookup_columns(lookup, model.layout, lookup_path)
    refusal = untrained_lookup_rows(lookup, model.trained, columns, lookup_path)
  if refusal and not allow_untrained:
    raise DataError(refusal)
  ids, predictions = predict_test_csv(model, path, tta)
  if lookup is not None:
    frame = submission(lookup, columns, ids, predictions, lookup_path, path)
  else:
    frame = prediction_table(ids, model.only_trained(predictions), model.layout.columns)
  write_csv(out, frame)
  what = "submission rows" if lookup is not None else "faces"
  print(f"{model.describe(tta)}\nwrote {len(frame)} {what} to {out}")
  print_untrained(model, "submitted anyway" if lookup is not None else "left empty")


def print_untrained(model: predictor.Predictor, what: str) -> None:
  """One line naming the keypoints the run never trained on, when there are."""
  untrained = model.untrained_names()
  if untrained:
    print(f"untrained keypoints {what}: {', '.join(untrained)}")

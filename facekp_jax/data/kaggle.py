"""Keypoint CSVs read into faces: Kaggle's training.csv layout for any keypoint layout, test.csv.

A training file holds a ``core.keypoints.Layout``'s coordinate columns (``{name}_x``,
``{name}_y``, any order, empty where a value is missing) and ``Image`` (96x96 space-separated
grey values): Kaggle's training.csv is the ``kaggle15`` one. ``header_layout`` names the layout
whose columns a file's header holds exactly. A test file holds ``ImageId`` and ``Image``.
Whole files (``read_training_csv``, ``read_test_csv``) or streamed in chunks for files too large
to hold as text and images at once (``read_training_chunks``, ``read_test_chunks``), with the
same checks and messages. Every problem with an input file raises ``DataError`` whose message
is one line naming the file, the row (1-based, excluding the header) and the problem. Every read
checks the raw header first (``_header``: each column once, the required ones there) and streams
through ``_LineLimit``, which refuses a line no face row could fill before pandas splits it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
from absl import logging

from facekp_jax.core import faces as faces_lib
from facekp_jax.core import keypoints
from facekp_jax.core.errors import DataError
from facekp_jax.core.faces import Faces

NUM_PIXELS = keypoints.IMAGE_SIZE * keypoints.IMAGE_SIZE
# Coordinates this far outside the 96x96 frame are treated as corrupt labels.
_COORD_SLACK = 0.5 * keypoints.IMAGE_SIZE
# What to do with a coordinate beyond the plausibility bound (the image +- _COORD_SLACK):
# refuse the file, drop that coordinate (it becomes missing), or drop the whole row.
BAD_LABELS = ("error", "mask", "drop")


# The reading failures of a damaged file (truncated gzip, binary bytes, broken quoting).
_CSV_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError)


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
  """Turns the failures of reading a damaged file into one-line DataErrors."""
  try:
    yield
  except pd.errors.EmptyDataError:
    raise DataError(f"{path}: file is empty") from None
  except _CSV_ERRORS as e:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f"{path}: cannot be read as CSV ({detail})") from None


# A face row is at most about 40 KB (9216 pixels of up to 3 digits and a space, and 98 points'
# coordinates); a line many times longer is no face row. Refusing it as it streams, before
# pandas splits it into cells and the cells into pixels, keeps memory bounded by the rows read.
MAX_LINE_MIB = 1


class _LineLimit(io.RawIOBase):
  """A CSV's bytes (gunzipped if ``.gz``) for pandas to read, that raise DataError as soon as a
  line runs past ``MAX_LINE_MIB``."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path
    self._file = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    self._newline = b""  # Set by the first read: b"\n", or b"\r" in a file of old Mac line ends.
    self._line = 0  # The line being read: 0 is the header, then data rows from 1.
    self._length = 0  # Its bytes read so far.

  def readable(self) -> bool:
    return True

  def read(self, size: int = -1) -> bytes:
    if size is None or size < 0:
      return self.readall()
    # A read no longer than the limit holds no whole line over it: only the line that it
    # continues is measured, up to its end or the read's.
    data = self._file.read(min(size, MAX_LINE_MIB << 20))
    if not self._newline:
      self._newline = b"\r" if b"\n" not in data and b"\r" in data else b"\n"
    end = data.find(self._newline)
    if self._length + (len(data) if end < 0 else end) > MAX_LINE_MIB << 20:
      where = f"row {self._line}" if self._line else "the header"
      raise DataError(f"{self._path}: {where}: line is longer than {MAX_LINE_MIB} MiB, more than "
                      "a face row can take; is this a Kaggle-layout CSV?")
    if end < 0:
      self._length += len(data)
    else:
      # numpy counts a 256 KB read in a fifth of the time bytes.count takes.
      self._line += int(np.count_nonzero(np.frombuffer(data, np.uint8) == self._newline[0]))
      self._length = len(data) - data.rfind(self._newline) - 1
    return data

  def readinto(self, buffer) -> int:
    data = self.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)

  def close(self) -> None:
    self._file.close()
    super().close()


def _header(path: str, required: tuple[str, ...] = ()) -> list[str]:
  """The column names of ``path``'s header, as written (before pandas renames a repeated one).

  Raises:
    DataError: a missing, empty or unreadable file, a column named twice (or two whose names
      differ only in case or spaces), or a ``required`` column missing.
  """
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  with _reading(path), _LineLimit(path) as stream:
    first = pd.read_csv(stream, header=None, nrows=1, dtype=str, keep_default_na=False)
  names = first.iloc[0].tolist()
  _refuse_repeats(path, names)
  missing = [c for c in required if c not in names]
  if missing:
    shown = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
    raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {shown}")
  return names


def _refuse_repeats(path: str, names: list[str]) -> None:
  """Refuses a header naming a column twice, or two whose names differ only in case or spaces:
  pandas would keep both (renaming the second ``name.1``), so one would be read, silently."""
  columns: dict[str, list[int]] = {}
  for i, name in enumerate(names):
    if name.strip():  # Unnamed columns are read by no one.
      columns.setdefault(name.strip().casefold(), []).append(i)
  for at in columns.values():
    if len(at) > 1:
      where = f"(columns {_listed([str(i + 1) for i in at])}); keep one"
      if len({names[i] for i in at}) == 1:
        times = "twice" if len(at) == 2 else f"{len(at)} times"
        raise DataError(f"{path}: column {names[at[0]]} appears {times} in the header {where}")
      raise DataError(f"{path}: columns {_listed([repr(names[i]) for i in at])} in the header "
                      f"differ only in case or spaces {where}")


def _listed(items: list[str]) -> str:
  return ", ".join(items[:-1]) + " and " + items[-1]


def _read_frame(path: str, required: tuple[str, ...]) -> pd.DataFrame:
  _header(path, required)
  with _reading(path), _LineLimit(path) as stream:
    frame = pd.read_csv(stream, dtype=str, keep_default_na=False)
  if len(frame) == 0:
    raise DataError(f"{path}: no data rows")
  return frame


_INTEGER_PIXELS = re.compile(r"[0-9 ]*")


def _parse_pixels(path: str, cells: pd.Series, first_row: int = 0) -> np.ndarray:
  """Parses the space-separated ``Image`` strings into uint8 (N, 96, 96).

  ``first_row`` is the file row (0-based) of ``cells[0]``, so errors name file rows.
  """
  images = np.empty((len(cells), NUM_PIXELS), np.uint8)
  for row, cell in enumerate(cells):
    if _INTEGER_PIXELS.fullmatch(cell):  # Kaggle's form: numpy parses it in C (3x faster).
      values = np.fromstring(cell, dtype=np.int64, sep=" ")
      if len(values) == NUM_PIXELS and values.max() <= 255:
        images[row] = values
        continue  # Anything else takes the checks below, which name the problem.
    values = np.array(cell.split(), dtype=object)
    if len(values) != NUM_PIXELS:
      raise DataError(f"{path}: row {first_row + row + 1}: Image has {len(values)} pixel values, "
                      f"expected {NUM_PIXELS} (96x96)")
    try:
      pixels = values.astype(np.float64)
    except ValueError:
      bad = next(i for i, v in enumerate(values) if not _is_number(v))
      raise DataError(f"{path}: row {first_row + row + 1}: Image pixel {bad + 1} is not a number: "
                      f"{values[bad]!r:.40}") from None
    out_of_range = (pixels < 0) | (pixels > 255) | ~np.isfinite(pixels)
    if out_of_range.any():
      bad = int(np.argmax(out_of_range))
      raise DataError(f"{path}: row {first_row + row + 1}: Image pixel {bad + 1} is {values[bad]}, "
                      "outside 0..255")
    images[row] = np.rint(pixels).astype(np.uint8)
  return images.reshape(-1, keypoints.IMAGE_SIZE, keypoints.IMAGE_SIZE)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _parse_coords(path: str, frame: pd.DataFrame, columns: tuple[str, ...], first_row: int = 0,
                  bad_labels: str = "error") -> tuple[np.ndarray, np.ndarray]:
  """Parses the 2K keypoint ``columns`` into float32 (N, 2K), NaN where empty.

  A coordinate outside the image but within ``_COORD_SLACK`` of it is a real label (faces in
  strong poses reach past a 96x96 crop) and is kept. One beyond is, by ``bad_labels``, an
  error ("error"), a missing value ("mask") or the end of its row ("drop").
  ``first_row`` is the file row (0-based) of the frame's first row, so errors name file rows.

  Returns:
    (coords, rows with an implausible coordinate) — the rows are already NaN-masked or to be
    dropped by the caller, as ``bad_labels`` says.
  """
  implausible = np.zeros(len(frame), bool)
  coords = np.full((len(frame), len(columns)), np.nan, np.float32)
  for j, column in enumerate(columns):
    cells = frame[column].str.strip()
    values = pd.to_numeric(cells, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(values) & (cells != "").to_numpy() & (cells.str.lower() != "nan").to_numpy()
    if bad.any():
      row = int(np.argmax(bad))
      raise DataError(f"{path}: row {first_row + row + 1}: column {column} is not a number: "
                      f"{cells.iloc[row]!r:.40}")
    far = np.abs(values - keypoints.IMAGE_SIZE / 2) > keypoints.IMAGE_SIZE / 2 + _COORD_SLACK
    far |= np.isinf(values)
    if far.any() and bad_labels == "error":
      row = int(np.argmax(far))
      raise DataError(f"{path}: row {first_row + row + 1}: column {column} is {values[row]}, "
                      f"far outside the 96x96 image (over {_COORD_SLACK:g} px); to go on, mask "
                      "such values (data.bad_labels=mask, evaluate --bad_labels=mask) or drop "
                      "their rows (=drop)")
    implausible |= far
    coords[:, j] = np.where(far, np.nan, values)
  return coords, implausible


def _faces(images, coords, implausible, bad_labels: str) -> Faces:
  if bad_labels == "drop":
    images, coords = images[~implausible], coords[~implausible]
  return faces_lib.from_arrays(images, coords)


def header_layout(path: str) -> keypoints.Layout:
  """The built-in layout whose coordinate columns a CSV's header holds exactly.

  Raises:
    DataError: a missing or unreadable file, a column named twice, or a header that matches no
      built-in layout.
  """
  header = _header(path)
  coords = [c for c in header if c not in (keypoints.IMAGE_COLUMN, keypoints.ID_COLUMN)]
  found = keypoints.of_columns(coords)
  if found is None:
    raise DataError(f"{path}: its {len(coords)} keypoint columns are no built-in layout's "
                    f"({', '.join(keypoints.LAYOUTS)}); to go on, name the layout "
                    "(data.keypoints) whose columns it holds")
  return found


def read_training_csv(path: str, bad_labels: str = "error",
                      layout: keypoints.Layout = keypoints.DEFAULT) -> Faces:
  """Reads a training file of ``layout``'s columns (``.csv`` or ``.csv.gz``); other columns
  are ignored.

  ``bad_labels``: see ``_parse_coords``; the rows it touched are logged.

  Raises:
    DataError: on any malformed content, naming file, row and problem.
  """
  frame = _read_frame(path, layout.columns + (keypoints.IMAGE_COLUMN,))
  coords, implausible = _parse_coords(path, frame, layout.columns, bad_labels=bad_labels)
  images = _parse_pixels(path, frame[keypoints.IMAGE_COLUMN])
  _log_bad_labels(path, int(implausible.sum()), bad_labels)
  return _faces(images, coords, implausible, bad_labels)


def _log_bad_labels(path: str, rows: int, bad_labels: str) -> None:
  if rows:
    what = "masked those values" if bad_labels == "mask" else "dropped those rows"
    logging.warning("%s: %d rows with a coordinate beyond %g px outside the image: %s "
                    "(data.bad_labels=%s)", path, rows, _COORD_SLACK, what, bad_labels)


def read_test_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a Kaggle test.csv-layout file: returns (image_ids, images (N,96,96,1))."""
  frame = _read_frame(path, (keypoints.ID_COLUMN, keypoints.IMAGE_COLUMN))
  ids = pd.to_numeric(frame[keypoints.ID_COLUMN], errors="coerce")
  if ids.isna().any():
    row = int(np.argmax(ids.isna().to_numpy()))
    raise DataError(f"{path}: row {row + 1}: ImageId is not a number: "
                    f"{frame[keypoints.ID_COLUMN].iloc[row]!r:.40}")
  images = _parse_pixels(path, frame[keypoints.IMAGE_COLUMN])
  return ids.to_numpy(np.int64), (images.astype(np.float32) / 255.0)[..., None]


# Chunked reading: the same checks and messages as the whole-file readers above, for files
# too large to hold as text and images at once.


def read_csv_chunks(path: str, required: tuple[str, ...],
                    chunk_rows: int = 1024) -> Iterator[tuple[int, pd.DataFrame]]:
  """Streams a CSV as ``(first_row, frame)`` pieces of at most ``chunk_rows`` rows (as text).

  ``first_row`` is the file row (0-based, excluding the header) of the frame's first row,
  for the row parsers' messages.

  Raises:
    DataError: a missing, empty or unreadable file, a column named twice, missing columns,
      or no data rows.
  """
  _header(path, required)
  first_row = 0
  with (_reading(path), _LineLimit(path) as stream,
        pd.read_csv(stream, dtype=str, keep_default_na=False, chunksize=chunk_rows) as reader):
    for frame in reader:
      if len(frame):
        yield first_row, frame
      first_row += len(frame)
  if first_row == 0:
    raise DataError(f"{path}: no data rows")


def read_training_chunks(path: str, chunk_rows: int = 1024, bad_labels: str = "error",
                         layout: keypoints.Layout = keypoints.DEFAULT) -> Iterator[Faces]:
  """``read_training_csv`` in pieces of at most ``chunk_rows`` faces; errors name file rows."""
  required = layout.columns + (keypoints.IMAGE_COLUMN,)
  for first_row, frame in read_csv_chunks(path, required, chunk_rows):
    coords, implausible = _parse_coords(path, frame, layout.columns, first_row, bad_labels)
    images = _parse_pixels(path, frame[keypoints.IMAGE_COLUMN], first_row)
    _log_bad_labels(f"{path} rows {first_row + 1}-{first_row + len(frame)}",
                    int(implausible.sum()), bad_labels)
    yield _faces(images, coords, implausible, bad_labels)


def read_test_chunks(path: str,
                     chunk_rows: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """``read_test_csv`` in pieces: yields (image_ids, images (n, 96, 96, 1)) per chunk.

  ImageIds must be whole numbers; errors name file rows.
  """
  required = (keypoints.ID_COLUMN, keypoints.IMAGE_COLUMN)
  for first_row, frame in read_csv_chunks(path, required, chunk_rows):
    cells = frame[keypoints.ID_COLUMN].str.strip()
    ids = pd.to_numeric(cells, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(ids) | (ids != np.round(ids))
    if bad.any():
      row = int(np.argmax(bad))
      raise DataError(f"{path}: row {first_row + row + 1}: ImageId is not a whole number: "
                      f"{cells.iloc[row]!r:.40}")
    images = _parse_pixels(path, frame[keypoints.IMAGE_COLUMN], first_row)
    yield ids.astype(np.int64), (images.astype(np.float32) / 255.0)[..., None]

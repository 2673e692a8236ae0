"""The data set of a run: its faces read (or synthesised), the rows it keeps, the seeded split.

Data flows one way: ``load_dataset`` reads (or synthesises) the faces, keeps the rows the
config asks for and splits them into train/validation *before* any augmentation.
"""

from __future__ import annotations

import numpy as np

from facekp_jax.core import faces as faces_lib
from facekp_jax.core.errors import DataError
from facekp_jax.core.faces import Faces
from facekp_jax.data import kaggle, synthetic

ROWS = ("complete", "all")


def rows_problem(rows) -> str | None:
  """What is wrong with a ``data.rows`` value (None: it is one of ``ROWS``)."""
  return None if rows in ROWS else f"must be 'complete' or 'all', got {rows!r}"


def select_rows(faces: Faces, rows: str, source: str) -> Faces:
  """Keeps ``"complete"`` rows (all 30 values) or ``"all"`` rows with any label."""
  if rows == "complete":
    keep = faces.mask.all(axis=1)
    what = "rows with all 30 keypoint values"
  elif rows == "all":
    keep = faces.mask.any(axis=1)
    what = "rows with any keypoint value"
  else:
    raise ValueError(f"data.rows {rows_problem(rows)}")
  if not keep.any():
    raise DataError(f"{source}: no usable rows (no {what}; data.rows={rows!r})")
  return faces.take(np.flatnonzero(keep))


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded permutation split of ``range(n)`` into (train, validation) indices.

  ``val_fraction=0`` puts every face into training (a final fit; no validation split).
  """
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
  perm = np.random.default_rng([seed, 0x5EED]).permutation(n)
  n_val = max(1, int(round(n * val_fraction))) if val_fraction else 0
  if n_val >= n:
    raise DataError(f"cannot split {n} faces with val_fraction={val_fraction}")
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def load_faces(data_config) -> tuple[Faces, str]:
  """Reads ``data.train_csv``, or synthesises the built-in faces when it is empty."""
  if data_config.train_csv:
    path = data_config.train_csv
    return kaggle.read_training_csv(path, data_config.bad_labels), path
  images, coords = synthetic.generate(
      data_config.synthetic_n, seed=data_config.synthetic_seed,
      missing=data_config.synthetic_missing)
  return faces_lib.from_arrays(images, coords), "built-in synthetic faces"


def load_dataset(data_config, seed: int) -> tuple[Faces, Faces, str]:
  """Returns (train, validation, source description), split before augmentation."""
  faces, source = load_faces(data_config)
  faces = select_rows(faces, data_config.rows, source)
  train_idx, val_idx = split(len(faces), data_config.val_fraction, seed)
  return faces.take(train_idx), faces.take(val_idx), source

"""The data set of a run: its faces read (or synthesised), their layout, the rows it keeps, the
seeded split.

Data flows one way: ``load_dataset`` reads (or synthesises) the faces, settles their keypoint
layout, keeps the rows the config asks for and splits them into train/validation *before* any
augmentation. The layout is ``data.keypoints``, or when that is "" the data's own: a folder's
point count (``data.pts``), a CSV's columns (``kaggle.header_layout``), Kaggle's 15 for the
built-in faces; and where the keypoints that carry any label are all of a smaller built-in
layout (a Kaggle file with only MTFL's 5 filled), that one (``narrow``). A one-line note says
which layout was chosen. ``data.val_csv`` replaces the split by a file of validation faces.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from facekp_jax.core import faces as faces_lib
from facekp_jax.core import keypoints
from facekp_jax.core.errors import DataError
from facekp_jax.core.faces import Faces
from facekp_jax.data import kaggle, pts, synthetic

ROWS = ("complete", "all")


def rows_problem(rows) -> str | None:
  """What is wrong with a ``data.rows`` value (None: it is one of ``ROWS``)."""
  return None if rows in ROWS else f"must be 'complete' or 'all', got {rows!r}"


def select_rows(faces: Faces, rows: str, source: str) -> Faces:
  """Keeps ``"complete"`` rows (every value) or ``"all"`` rows with any label."""
  if rows == "complete":
    keep = faces.mask.all(axis=1)
    what = f"rows with all {faces.mask.shape[1]} keypoint values"
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


def take_keypoints(faces: Faces, source: keypoints.Layout, target: keypoints.Layout) -> Faces:
  """``faces`` of layout ``source`` with only the keypoints of ``target`` (named alike)."""
  cols = [source.columns.index(c) for c in target.columns]
  return Faces(faces.images, faces.targets[:, cols], faces.mask[:, cols])


def narrow(faces: Faces, layout: keypoints.Layout) -> keypoints.Layout:
  """The smallest built-in layout holding every keypoint of ``faces`` that has a label."""
  labelled = faces.mask.reshape(len(faces), -1, 2).any(axis=(0, 2))
  names = [n for n, has in zip(layout.names, labelled) if has]
  return keypoints.of_names(names) if names else layout


def load_faces(data_config) -> tuple[Faces, keypoints.Layout, str]:
  """Reads ``data.train_csv`` (a CSV or a folder with .pts files), or synthesises the built-in
  faces when it is empty; returns (faces, their layout, the source's description)."""
  path, name = data_config.train_csv, data_config.keypoints
  if not path:
    layout = keypoints.get(name)
    images, coords = synthetic.generate(
        data_config.synthetic_n, seed=data_config.synthetic_seed,
        missing=data_config.synthetic_missing)
    faces = take_keypoints(faces_lib.from_arrays(images, coords), keypoints.KAGGLE, layout)
    return faces, layout, "built-in synthetic faces"
  if os.path.isdir(path):
    faces, layout, _ = pts.read_folder(path, keypoints.get(name) if name else None)
    how = "its .pts files' point count"
  else:
    layout = keypoints.get(name) if name else kaggle.header_layout(path)
    faces = kaggle.read_training_csv(path, data_config.bad_labels, layout)
    how = "its columns"
  if name:
    return faces, layout, path
  smaller = narrow(faces, layout)
  if smaller.num_keypoints < layout.num_keypoints:
    faces = take_keypoints(faces, layout, smaller)
    how = f"only its columns of {smaller.name}'s keypoints hold values"
    layout = smaller
  logging.info("data: %s: keypoint layout %s, from %s (data.keypoints names another)",
               path, layout.describe(), how)
  return faces, layout, path


def load_validation(data_config, layout: keypoints.Layout) -> Faces:
  """``data.val_csv``'s faces (a CSV or a folder of .pts faces, read as ``data.train_csv``) with
  ``layout``'s keypoints, the rows ``data.rows`` keeps.

  Raises:
    DataError: a file the training file's reading refuses, or one without ``layout``'s columns.
  """
  path = data_config.val_csv
  if os.path.isdir(path):
    faces, _, _ = pts.read_folder(path, layout)
  else:
    faces = kaggle.read_training_csv(path, data_config.bad_labels, layout)
  return select_rows(faces, data_config.rows, path)


def load_dataset(data_config, seed: int) -> tuple[Faces, Faces, keypoints.Layout, str]:
  """Returns (train, validation, the keypoint layout, the source's description), split before
  augmentation: the seeded split of the faces, or with ``data.val_csv`` every face trains and
  that file's faces validate."""
  faces, layout, source = load_faces(data_config)
  faces = select_rows(faces, data_config.rows, source)
  if data_config.val_csv:
    return faces, load_validation(data_config, layout), layout, source
  train_idx, val_idx = split(len(faces), data_config.val_fraction, seed)
  return faces.take(train_idx), faces.take(val_idx), layout, source

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from facekp_jax.core import errors, keypoints
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.data import kaggle
from tests.conftest import kaggle_frame, random_faces


def test_reader_round_trip(write_csv):
  images, coords = random_faces(5, missing_every=2)
  faces = kaggle.read_training_csv(write_csv("train.csv", images, coords))
  assert faces.images.shape == (5, 96, 96, 1) and faces.images.dtype == np.float32
  np.testing.assert_allclose(faces.images[..., 0], images / 255.0, atol=1e-7)
  np.testing.assert_array_equal(faces.mask, ~np.isnan(coords))
  np.testing.assert_allclose(faces.targets, np.nan_to_num(coords, nan=0.0), atol=1e-4)
  assert faces.mask[0].sum() == 8 and faces.mask[1].sum() == 30


def test_reader_reads_gzip(tmp_path):
  images, coords = random_faces(3)
  path = tmp_path / "train.csv.gz"
  kaggle_frame(images, coords).to_csv(path, index=False)
  faces = kaggle.read_training_csv(str(path))
  assert len(faces) == 3 and faces.mask.all()


def test_pixels_read_the_same_in_every_spelling(tmp_path):
  """Integers and spaces (Kaggle's form, numpy's fast path) and other spellings of the same
  numbers (the checked path: decimals, tabs, leading spaces) give the same images."""
  images, coords = random_faces(4)
  frame = kaggle_frame(images, coords)
  pixels = [[str(v) for v in row.ravel()] for row in images]
  frame.loc[1, "Image"] = "  ".join(pixels[1])
  frame.loc[2, "Image"] = " ".join(f"{v}.0" for v in pixels[2])
  frame.loc[3, "Image"] = " " + "\t".join(pixels[3])
  path = tmp_path / "train.csv"
  frame.to_csv(path, index=False)
  faces = kaggle.read_training_csv(str(path))
  np.testing.assert_allclose(faces.images[..., 0], images / 255.0, atol=1e-7)


def test_read_test_csv(tmp_path):
  images, _ = random_faces(3)
  frame = kaggle_frame(images, np.zeros((3, 30)))[["Image"]]
  frame.insert(0, "ImageId", [7, 8, 9])
  frame.to_csv(tmp_path / "test.csv", index=False)
  ids, imgs = kaggle.read_test_csv(str(tmp_path / "test.csv"))
  np.testing.assert_array_equal(ids, [7, 8, 9])
  assert imgs.shape == (3, 96, 96, 1)


def _damaged(write_csv, damage):
  frame = damage(kaggle_frame(*random_faces(4)))
  path = write_csv("bad.csv", np.zeros((0, 96, 96), np.uint8), np.zeros((0, 30)))
  frame.to_csv(path, index=False)
  return path


def _set(column, row, value):
  return lambda f: f.assign(**{column: f[column].astype(object).where(f.index != row, value)})


@pytest.mark.parametrize("damage, expected", [
    (_set("Image", 2, "1 2 3"), "row 3: Image has 3 pixel values, expected 9216"),
    (_set("Image", 1, "x " * 9216), "row 2: Image pixel 1 is not a number"),
    (_set("Image", 0, "300 " * 9216), "row 1: Image pixel 1 is 300, outside 0..255"),
    (_set("nose_tip_y", 3, "abc"), "row 4: column nose_tip_y is not a number"),
    (_set("nose_tip_x", 1, 900.0), "row 2: column nose_tip_x is 900.0, far outside the 96x96"),
    (lambda f: f.drop(columns=["mouth_left_corner_y"]), "missing column mouth_left_corner_y"),
    (lambda f: f.drop(columns=["Image"]), "missing column Image"),
])
def test_reader_errors_name_file_row_and_problem(write_csv, damage, expected):
  path = _damaged(write_csv, damage)
  with pytest.raises(errors.DataError) as e:
    kaggle.read_training_csv(path)
  msg = str(e.value)
  assert msg.startswith(path + ": ") and expected in msg and "\n" not in msg


def test_reader_errors_for_missing_empty_and_corrupt_files(tmp_path):
  with pytest.raises(errors.DataError, match="file not found"):
    kaggle.read_training_csv(str(tmp_path / "nope.csv"))
  (tmp_path / "empty.csv").write_text("")
  with pytest.raises(errors.DataError, match="empty.csv: file is empty"):
    kaggle.read_training_csv(str(tmp_path / "empty.csv"))
  (tmp_path / "header.csv").write_text(",".join(keypoints.KAGGLE.columns + ("Image",)) + "\n")
  with pytest.raises(errors.DataError, match="header.csv: no data rows"):
    kaggle.read_training_csv(str(tmp_path / "header.csv"))
  raw = gzip.compress(kaggle_frame(*random_faces(2)).to_csv(index=False).encode())
  (tmp_path / "cut.csv.gz").write_bytes(raw[: len(raw) // 2])
  with pytest.raises(errors.DataError, match="cut.csv.gz: cannot be read as CSV"):
    kaggle.read_training_csv(str(tmp_path / "cut.csv.gz"))


def test_select_rows_complete_and_all(write_csv):
  images, coords = random_faces(6, missing_every=3)  # Rows 0 and 3 are partial.
  coords[5] = np.nan  # No label at all.
  faces = kaggle.read_training_csv(write_csv("t.csv", images, coords))
  assert len(dataset_lib.select_rows(faces, "complete", "t.csv")) == 3
  assert len(dataset_lib.select_rows(faces, "all", "t.csv")) == 5
  coords[[1, 2, 4]] = np.nan
  partial = kaggle.read_training_csv(write_csv("p.csv", images, coords))
  with pytest.raises(errors.DataError, match="p.csv: no usable rows"):
    dataset_lib.select_rows(partial, "complete", "p.csv")


def test_split_is_seeded_disjoint_and_sized():
  train, val = dataset_lib.split(100, 0.2, seed=3)
  assert len(val) == 20 and len(train) == 80
  assert not set(train) & set(val) and set(train) | set(val) == set(range(100))
  again = dataset_lib.split(100, 0.2, seed=3)
  np.testing.assert_array_equal(train, again[0])
  assert not np.array_equal(val, dataset_lib.split(100, 0.2, seed=4)[1])


def test_labels_outside_the_frame_are_kept_and_implausible_ones_follow_bad_labels(write_csv):
  images, coords = random_faces(4)
  coords[0, 1] = 140.0  # 44 px below the image: a real label of a face in a strong pose.
  coords[2, 3] = 150.0  # 54 px below: beyond the plausibility bound.
  path = write_csv("poses.csv", images, coords)
  with pytest.raises(errors.DataError) as e:
    kaggle.read_training_csv(path)  # Default "error": the message names the ways on.
  assert "row 3: column left_eye_center_y" not in str(e.value)
  assert "row 3: column right_eye_center_y is 150.0" in str(e.value)
  assert "data.bad_labels=mask" in str(e.value) and "=drop" in str(e.value)
  masked = kaggle.read_training_csv(path, bad_labels="mask")
  assert len(masked) == 4 and masked.targets[0, 1] == 140.0 and masked.mask[0, 1] == 1
  assert masked.mask[2, 3] == 0 and masked.mask[2].sum() == 29  # Only that value goes.
  dropped = kaggle.read_training_csv(path, bad_labels="drop")
  assert len(dropped) == 3 and dropped.targets[0, 1] == 140.0
  np.testing.assert_allclose(dropped.targets[2], coords[3], atol=1e-4)  # Row 3 went.
  chunks = list(kaggle.read_training_chunks(path, chunk_rows=2, bad_labels="drop"))
  assert [len(c) for c in chunks] == [2, 1]


def _with_column(name, values_from, at=30):
  """A Kaggle frame of 4 faces with one more column ``name`` (column ``at + 1``), holding other
  values than ``values_from``."""
  frame = kaggle_frame(*random_faces(4))
  frame.insert(at, name, frame[values_from] + 1.0, allow_duplicates=True)
  return frame


_READS = {
    "whole": kaggle.read_training_csv,
    "chunks": lambda path: list(kaggle.read_training_chunks(path, chunk_rows=2)),
    "header_layout": kaggle.header_layout,
}


@pytest.mark.parametrize("read", _READS.values(), ids=_READS.keys())
@pytest.mark.parametrize("name, expected", [
    pytest.param("nose_tip_x", "column nose_tip_x appears twice in the header (columns 21 and "
                 "31); keep one", id="same"),
    pytest.param(" Nose_Tip_X", "columns 'nose_tip_x' and ' Nose_Tip_X' in the header differ only "
                 "in case or spaces (columns 21 and 31); keep one", id="near"),
])
def test_duplicated_columns_are_refused_on_every_reading_path(tmp_path, read, name, expected):
  path = str(tmp_path / "faces.csv")
  _with_column(name, "nose_tip_x").to_csv(path, index=False)
  with pytest.raises(errors.DataError) as e:
    read(path)
  assert str(e.value) == f"{path}: {expected}"


def _long_line(path, row, length):
  """Writes 40 faces (about 27 KB a row) with data row ``row`` (1-based) ``length`` bytes long,
  streamed, so that a long line costs the test no memory."""
  lines = kaggle_frame(*random_faces(40)).to_csv(index=False).split("\n")
  with (gzip.open(path, "wt", compresslevel=1) if path.name.endswith(".gz") else
        open(path, "w")) as f:
    f.write("\n".join(lines[:row + 1]))
    for _ in range((length - len(lines[row])) // (2 << 20)):
      f.write(" 1" * (1 << 20))
    f.write("\n" + "\n".join(lines[row + 1:]))
  return str(path)


@pytest.mark.parametrize("read", list(_READS.values())[:2], ids=list(_READS)[:2])
@pytest.mark.parametrize("name", ["faces.csv", "faces.csv.gz"])
def test_a_line_too_long_for_a_face_row_is_refused(tmp_path, read, name):
  path = _long_line(tmp_path / name, 37, 3 << 20)
  with pytest.raises(errors.DataError) as e:
    read(path)
  assert str(e.value) == (f"{path}: row 37: line is longer than 1 MiB, more than a face row can "
                          "take; is this a Kaggle-layout CSV?")


def test_a_header_too_long_is_refused(tmp_path):
  (tmp_path / "header.csv").write_text("x" * (2 << 20) + "\n1\n")
  with pytest.raises(errors.DataError, match=r"header.csv: the header: line is longer than 1 MiB"):
    kaggle.header_layout(str(tmp_path / "header.csv"))


_PEAK_RSS = """
import resource, sys
from facekp_jax.core import errors
from facekp_jax.data import kaggle
try:
  kaggle.read_training_csv(sys.argv[1])
except errors.DataError as e:
  print(e)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_a_long_line_is_refused_within_bounded_memory(tmp_path):
  """One 200 MB line of pixel values took over 2 GB when it was split before it was refused."""
  path = _long_line(tmp_path / "faces.csv", 3, 200 << 20)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, path], capture_output=True, text=True,
                        cwd=root, env=dict(os.environ, PYTHONPATH=root), timeout=120, check=True)
  message, peak_mib = proc.stdout.strip().splitlines()
  assert message.startswith(f"{path}: row 3: line is longer than 1 MiB")
  assert int(peak_mib) < 600, f"peak RSS {peak_mib} MiB"

"""Keypoint layouts as data: each built-in one flips onto itself, reads from its own files, and a
run of it trains, evaluates and writes only its own keypoints."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from absl import logging as absl_logging

from configs import tiny
from facekp_jax.core import geometry, keypoints
from facekp_jax.core.errors import ConfigError, DataError
from facekp_jax.core.faces import Faces
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.data import pts
from facekp_jax.serving import predictor, submission
from facekp_jax.training import loop
from tests.conftest import kaggle_frame, random_faces

LAYOUTS = list(keypoints.LAYOUTS.values())


def _layout_faces(layout, n, seed=0):
  """Random images and in-frame points of ``layout`` (N, 2K)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 96, 96), dtype=np.uint8)
  return images, rng.uniform(15, 80, (n, layout.num_coords)).astype(np.float32)


def _write_layout_csv(path, layout, images, coords):
  frame = pd.DataFrame(coords, columns=list(layout.columns))
  frame[keypoints.IMAGE_COLUMN] = [" ".join(map(str, im.reshape(-1))) for im in images]
  frame.to_csv(path, index=False)
  return str(path)


def _tiny(train_csv="", **data):
  config = tiny.get_config()
  config.num_epochs = 1
  config.data.train_csv = train_csv
  for key, value in data.items():
    config.data[key] = value
  return config


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda k: k.name)
def test_each_layout_flips_onto_itself_and_twice_is_the_identity(layout):
  flip = np.asarray(layout.flip)
  assert sorted(flip) == list(range(layout.num_keypoints))  # A permutation of its own points.
  np.testing.assert_array_equal(flip[flip], np.arange(layout.num_keypoints))
  rng = np.random.default_rng(1)
  faces = Faces(rng.random((3, 96, 96, 1), np.float32),
                rng.uniform(0, 95, (3, layout.num_coords)).astype(np.float32),
                np.ones((3, layout.num_coords), np.float32))
  twice = geometry.hflip(geometry.hflip(faces, layout), layout)
  np.testing.assert_array_equal(twice.images, faces.images)
  np.testing.assert_allclose(twice.targets, faces.targets, atol=1e-5)
  # A flipped face's left points lie where its right points were mirrored.
  once = geometry.hflip(faces, layout).targets.reshape(3, -1, 2)
  original = faces.targets.reshape(3, -1, 2)
  np.testing.assert_allclose(once[:, flip, 0], 95 - original[:, :, 0], atol=1e-5)
  for a, b in zip(layout.names, (layout.names[i] for i in flip)):
    if a != b and "left" in a:
      assert b == a.replace("left", "right").replace(a.rsplit("_", 1)[-1], b.rsplit("_", 1)[-1])


def test_the_layouts_match_their_sets_definitions():
  w300, wflw = keypoints.W300, keypoints.WFLW
  assert [w300.names[i] for i in (36, 45)] == ["right_eye_36", "left_eye_45"]
  assert w300.flip[36] == 45 and w300.flip[8] == 8 and w300.flip[0] == 16
  assert w300.flip[48] == 54 and w300.flip[62] == 62 and w300.flip[31] == 35
  assert wflw.flip[60] == 72 and wflw.flip[96] == 97 and wflw.flip[16] == 16
  assert wflw.flip[38] == 50 and wflw.flip[33] == 46
  assert keypoints.COFW.flip[8] == 9 and keypoints.COFW.flip[28] == 28
  assert dict(w300.normalisers) == {"inter_ocular": (36, 45)}
  assert dict(keypoints.MTFL.normalisers) == {"inter_pupil": (0, 1)}
  # A name means one point: MTFL's five are Kaggle's, no other two layouts share one.
  assert set(keypoints.MTFL.names) < set(keypoints.KAGGLE.names)
  others = [n for k in LAYOUTS if k.name != "kaggle15" for n in k.names]
  assert len(others) == len(set(others))
  # Kaggle's twins are the ones the 15-point code always had.
  assert keypoints.KAGGLE.flip == (1, 0, 4, 5, 2, 3, 8, 9, 6, 7, 10, 12, 11, 13, 14)


def test_layout_names_are_checked_and_empty_is_the_default():
  assert keypoints.get("") is keypoints.KAGGLE and keypoints.problem("") is None
  assert "300w68" in keypoints.problem("68points")
  with pytest.raises(ConfigError, match="data.keypoints must be one of"):
    loop.train_and_evaluate(_tiny(keypoints="68points"), "/tmp/never_written")


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda k: k.name)
def test_a_csv_of_each_layout_reads_as_it_and_trains_an_epoch(layout, tmp_path):
  path = _write_layout_csv(tmp_path / "faces.csv", layout, *_layout_faces(layout, 24))
  faces, found, _ = dataset_lib.load_faces(_tiny(path).data)
  assert found is layout and faces.targets.shape == (24, layout.num_coords)
  results = loop.train_and_evaluate(_tiny(path), str(tmp_path / "w"))
  assert set(results["val_per_keypoint_rmse"]) == set(layout.names)
  saved = json.load(open(tmp_path / "w" / "config.json"))
  assert saved["data"]["keypoints"] == layout.name
  model = predictor.load(str(tmp_path / "w"))
  assert model.layout is layout
  assert model.predict(faces.images[:2]).shape == (2, layout.num_coords)


def test_a_kaggle_file_with_only_mtfls_five_filled_is_a_five_point_set(tmp_path, caplog):
  images, coords = random_faces(24)
  five = [keypoints.KAGGLE.columns.index(c) for c in keypoints.MTFL.columns]
  coords[:, np.setdiff1d(np.arange(30), five)] = np.nan
  path = str(tmp_path / "mtfl.csv")
  kaggle_frame(images, coords).to_csv(path, index=False)
  caplog.set_level("INFO")
  verbosity = absl_logging.get_verbosity()  # A command run before may have quietened absl.
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    faces, layout, _ = dataset_lib.load_faces(_tiny(path).data)
  finally:
    absl_logging.set_verbosity(verbosity)
  assert layout is keypoints.MTFL and faces.targets.shape == (24, 10)
  np.testing.assert_allclose(faces.targets, coords[:, five])
  assert "keypoint layout mtfl5 (5 keypoints)" in caplog.text  # The one-line note.
  # Named, the layout is what is asked: Kaggle's 15, ten of them never labelled.
  faces, layout, _ = dataset_lib.load_faces(_tiny(path, keypoints="kaggle15").data)
  assert layout is keypoints.KAGGLE and faces.targets.shape == (24, 30)


def test_a_five_point_run_writes_nothing_of_keypoints_it_lacks(tmp_path):
  images, coords = random_faces(40)
  five = [keypoints.KAGGLE.columns.index(c) for c in keypoints.MTFL.columns]
  coords[:, np.setdiff1d(np.arange(30), five)] = np.nan
  path = str(tmp_path / "mtfl.csv")
  kaggle_frame(images, coords).to_csv(path, index=False)
  workdir = str(tmp_path / "w")
  loop.train_and_evaluate(_tiny(path), workdir)
  model = predictor.load(workdir)
  assert model.variables["params"]["output"]["kernel"].shape[-1] == 10  # 10 outputs.
  lacking = set(keypoints.KAGGLE.names) - set(keypoints.MTFL.names)
  for name in ("results.json", "trained_keypoints.json", "config.json"):
    text = open(os.path.join(workdir, name)).read()
    assert not [n for n in lacking if n in text], name
  # A Kaggle lookup asking for the ten it lacks is refused, naming them; nothing is written.
  pd.DataFrame({"ImageId": [1, 2], "Image": [" ".join(["9"] * 9216)] * 2}).to_csv(
      tmp_path / "test.csv", index=False)
  lookup = pd.DataFrame({"RowId": [1, 2, 3], "ImageId": [1, 1, 2], "FeatureName": [
      "nose_tip_x", "left_eye_inner_corner_y", "nose_tip_y"], "Location": ""})
  lookup.to_csv(tmp_path / "lookup.csv", index=False)
  out = str(tmp_path / "submission.csv")
  with pytest.raises(DataError, match=r"lookup.csv: row 2: 1 rows ask for keypoints that this "
                     r"model's layout mtfl5 \(5 keypoints\) lacks \(left_eye_inner_corner\)"):
    submission.run_csv(model, str(tmp_path / "test.csv"), out, str(tmp_path / "lookup.csv"))
  assert not os.path.exists(out)
  submission.run_csv(model, str(tmp_path / "test.csv"), out)
  assert list(pd.read_csv(out).columns) == ["ImageId", *keypoints.MTFL.columns]
  # Resuming (here: for longer) keeps the layout that the workdir's run has.
  config = _tiny(path)
  config.num_epochs = 2
  loop.train_and_evaluate(config, workdir, allow_config_change=True)
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["keypoints"] == "mtfl5"
  assert predictor.load(workdir).step > model.step


def test_a_header_of_no_layout_is_one_line_naming_the_way_on(tmp_path):
  path = tmp_path / "odd.csv"
  pd.DataFrame({"a_x": [1.0], "a_y": [2.0], "Image": [" ".join(["0"] * 9216)]}).to_csv(
      path, index=False)
  with pytest.raises(DataError, match=r"odd.csv: its 2 keypoint columns are no built-in "
                     r"layout's .*name the layout \(data.keypoints\)"):
    dataset_lib.load_faces(_tiny(str(path)).data)
  # Named, a layout whose columns the file lacks names them.
  with pytest.raises(DataError, match="odd.csv: missing columns left_eye_center_x"):
    dataset_lib.load_faces(_tiny(str(path), keypoints="mtfl5").data)


def test_a_folder_of_68_point_pts_files_trains_an_epoch_and_evaluates(tmp_path):
  rng = np.random.default_rng(0)
  n, layout = 20, keypoints.W300
  points = np.stack([rng.uniform(60, 190, (layout.num_keypoints, 2)) for _ in range(n)])
  images = rng.integers(0, 256, (n, 256, 256), dtype=np.uint8)
  pts.write_folder(str(tmp_path / "faces"), images, points)
  faces, found, _ = dataset_lib.load_faces(_tiny(str(tmp_path / "faces")).data)
  assert found is layout and faces.images.shape == (n, 96, 96, 1)
  workdir = str(tmp_path / "w")
  results = loop.train_and_evaluate(_tiny(str(tmp_path / "faces")), workdir)
  assert results["val_nme_normaliser"] == "inter_ocular"
  assert len(results["val_per_keypoint_rmse"]) == 68


def test_the_built_in_faces_take_kaggles_layouts_only(tmp_path):
  faces, layout, _ = dataset_lib.load_faces(_tiny(keypoints="mtfl5", synthetic_n=8).data)
  assert layout is keypoints.MTFL and faces.targets.shape == (8, 10)
  with pytest.raises(ConfigError, match="the built-in faces have Kaggle's keypoints only"):
    loop.train_and_evaluate(_tiny(keypoints="300w68"), str(tmp_path / "w"))

"""Kaggle submissions, prediction files and pictures from a trained workdir."""

import dataclasses
import json
import os

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from skimage import data as skimage_data

from facekp_jax import predict
from facekp_jax.core import keypoints
from facekp_jax.data import synthetic
from facekp_jax.serving import detect, images, pictures, predictor, submission

KAGGLE = keypoints.KAGGLE

K = 5  # Faces in the generated test.csv.


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
  return tiny_workdir


@pytest.fixture(scope="module")
def model(workdir):
  return predictor.load(workdir)


@pytest.fixture
def loaded(monkeypatch, model):
  """``predict.main`` gets the module's model without restoring it again."""
  monkeypatch.setattr(predictor, "load", lambda workdir, which="best": model)
  return model


@pytest.fixture(scope="module")
def kaggle_files(tmp_path_factory):
  """test.csv (ImageIds 1..K) and an IdLookupTable.csv in a shuffled-but-fixed order."""
  folder = tmp_path_factory.mktemp("kaggle")
  images, _ = synthetic.generate(K, seed=21)
  test = synthetic.to_frame(images, np.zeros((K, 30)))[["Image"]]
  test.insert(0, "ImageId", np.arange(1, K + 1))
  test.to_csv(folder / "test.csv", index=False)
  rng = np.random.default_rng(0)
  rows = [(i, name) for i in range(1, K + 1)
          for name in np.array(KAGGLE.columns)[np.sort(rng.choice(30, 4 + 5 * i, False))]]
  order = rng.permutation(len(rows))
  lookup = pd.DataFrame({"RowId": order + 1, "ImageId": [rows[j][0] for j in order],
                         "FeatureName": [rows[j][1] for j in order], "Location": ""})
  lookup.to_csv(folder / "IdLookupTable.csv", index=False)
  return str(folder / "test.csv"), str(folder / "IdLookupTable.csv"), images, lookup


def _fails(argv, capsys):
  with pytest.raises(SystemExit) as e:
    predict.main(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
  return err.strip()


def test_submission_has_kaggles_format(workdir, kaggle_files, tmp_path):
  test_csv, lookup_csv, images, lookup = kaggle_files
  out = tmp_path / "submission.csv"
  predict.main([f"--workdir={workdir}", f"--csv={test_csv}", f"--lookup={lookup_csv}",
                f"--out={out}"])
  lines = out.read_text().splitlines()
  assert lines[0] == "RowId,Location" and len(lines) == 1 + len(lookup)
  written = pd.read_csv(out)
  np.testing.assert_array_equal(written["RowId"], lookup["RowId"])  # The lookup's own order.
  predictions = predictor.load(workdir).predict(images[..., None].astype(np.float32) / 255.0)
  rows = lookup["ImageId"].to_numpy() - 1
  cols = [KAGGLE.columns.index(n) for n in lookup["FeatureName"]]
  np.testing.assert_allclose(written["Location"], np.clip(predictions[rows, cols], 0, 96),
                             atol=1e-3)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_locations_are_clipped_to_the_frame(loaded, kaggle_files, tmp_path, monkeypatch):
  test_csv, lookup_csv, _, lookup = kaggle_files
  wild = np.where(np.arange(30) % 2 == 0, -40.0, 140.0)  # Every x below, every y above.
  monkeypatch.setattr(predictor.Predictor, "predict",
                      lambda self, images, tta=False: np.tile(wild, (len(images), 1)))
  out = tmp_path / "submission.csv"
  predict.main(["--workdir=w", f"--csv={test_csv}", f"--lookup={lookup_csv}", f"--out={out}"])
  expected = np.where(lookup["FeatureName"].str.endswith("_x"), 0.0, 96.0)
  np.testing.assert_array_equal(pd.read_csv(out)["Location"], expected)
  np.testing.assert_array_equal(submission.clip_locations(np.array([-0.1, 0.0, 48.5, 96.0, 96.2])),
                                [0.0, 0.0, 48.5, 96.0, 96.0])


def test_without_lookup_one_row_per_face_and_named_columns(loaded, kaggle_files, tmp_path):
  test_csv, _, images, _ = kaggle_files
  out = tmp_path / "predictions.csv"
  predict.main(["--workdir=w", f"--csv={test_csv}", f"--out={out}", "--tta"])
  written = pd.read_csv(out)
  assert list(written.columns) == ["ImageId", *KAGGLE.columns]
  np.testing.assert_array_equal(written["ImageId"], np.arange(1, K + 1))
  expected = loaded.predict(images[..., None].astype(np.float32) / 255.0, tta=True)
  np.testing.assert_allclose(written[list(KAGGLE.columns)], np.clip(expected, 0, 96), atol=1e-3)


def _save_rgb(path, grey_u8):
  plt.imsave(path, np.repeat(grey_u8[..., None], 3, axis=2))
  return str(path)


def test_pictures_are_predicted_in_their_own_pixels(loaded, tmp_path, capsys):
  face, _ = synthetic.generate(1, seed=8)
  base = loaded.predict(face[..., None].astype(np.float32) / 255.0)[0]
  big = np.repeat(np.repeat(face[0], 2, axis=0), 2, axis=1)  # 192x192, 2x upsampled.
  wide = np.full((192, 320), 30, np.uint8)
  wide[:, 64:256] = big  # The face is the central square.
  paths = [_save_rgb(tmp_path / "big.png", big), _save_rgb(tmp_path / "wide.png", wide)]
  twice = 2 * base + 0.5  # Pixel centres: x96 -> (x96 + 0.5) * 2 - 0.5.
  shift = np.tile([64.0, 0.0], 15)
  out_dir = tmp_path / "overlays"
  got = pictures.run_pictures(loaded, paths, str(out_dir), crop="center")
  np.testing.assert_allclose(got[0].keypoints, twice, atol=2e-3)
  np.testing.assert_allclose(got[1].keypoints, twice + shift, atol=2e-3)
  assert (got[1].width, got[1].height) == (320, 192)
  assert (out_dir / "big_keypoints.png").stat().st_size > 0
  assert (out_dir / "wide_keypoints.png").stat().st_size > 0
  capsys.readouterr()
  # The command line, a JPEG (decoded by Pillow, lossy), the default framing (pad to square).
  jpeg = tmp_path / "big.jpg"
  plt.imsave(jpeg, np.repeat(big[..., None], 3, axis=2))
  assert matplotlib.image.imread(jpeg).shape == (192, 192, 3)
  predict.main(["--workdir=w", "--nodetect", f"--out_dir={out_dir}", paths[0], str(jpeg)])
  out = capsys.readouterr().out
  assert f"{paths[0]} (192x192, crop=none)" in out and "left_eye_center" in out
  assert (out_dir / "big_keypoints.png").exists()
  line = next(l for l in out.splitlines() if l.strip().startswith("nose_tip"))
  nose = KAGGLE.names.index("nose_tip")
  np.testing.assert_allclose([float(v) for v in line.split()[1:]], twice[2 * nose:2 * nose + 2],
                             atol=0.06)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """A folder: a real photograph with one face, and a picture of a blank wall."""
  folder = tmp_path_factory.mktemp("photos")
  plt.imsave(folder / "astronaut.png", skimage_data.astronaut())
  plt.imsave(folder / "wall.jpg", np.full((120, 160, 3), 200, np.uint8))
  return folder


def test_photos_give_a_row_per_face_and_one_line_for_a_photo_without(loaded, photos, tmp_path,
                                                                      capsys):
  astronaut, wall = str(photos / "astronaut.png"), str(photos / "wall.jpg")
  out_dir = tmp_path / "out"
  predict.main(["--workdir=w", f"--out_dir={out_dir}", str(photos)])  # A folder: its files.
  out = capsys.readouterr().out
  assert [line for line in out.splitlines() if "wall" in line] == [
      f"{wall} (160x120): no face found"]
  table = pd.read_csv(out_dir / "faces.csv")
  assert list(table.columns) == [*pictures.PHOTO_COLUMNS, *KAGGLE.columns]
  assert table["file"].tolist() == [astronaut] and table["face"].tolist() == [0]
  record = json.loads((out_dir / "faces.json").read_text())
  assert [p["file"] for p in record["photos"]] == [astronaut, wall]
  assert record["photos"][1]["faces"] == [] and record["refine"] is True
  assert (out_dir / "astronaut_keypoints.png").stat().st_size > 0
  assert not (out_dir / "wall_keypoints.png").exists()
  # The coordinates are the model's on the face's (second) aligned crop, mapped back.
  face = record["photos"][0]["faces"][0]
  t = np.array(face["crop_transform"])
  crop = detect.crop(images.to_grey(images.read_picture(astronaut)), t)
  expected = detect.to_photo(t, loaded.predict(crop[None, ..., None]))[0]
  np.testing.assert_allclose(table[list(KAGGLE.columns)].to_numpy()[0], expected, atol=1e-3)
  np.testing.assert_allclose(table[["box_x", "box_y", "box_width", "box_height"]].to_numpy()[0],
                             face["box"], atol=0.01)
  # Files as a list, one pass only, a CSV of one's own naming (its JSON beside it).
  mine = tmp_path / "mine.csv"
  predict.main(["--workdir=w", "--norefine", f"--out_dir={out_dir}", f"--out={mine}", wall,
                astronaut])
  assert pd.read_csv(mine)["file"].tolist() == [astronaut]
  single = json.loads((tmp_path / "mine.json").read_text())
  assert single["refine"] is False and single["photos"][0]["faces"] == []
  assert single["photos"][1]["faces"][0]["box"] == face["box"]


def test_photos_read_by_a_heatmap_model_carry_each_keypoints_confidence(photos, tmp_path):
  """The shipped model scores each keypoint: a column each in the CSV, a map in the JSON, the
  model's confidences on the face's last crop; unsure keypoints are drawn as rings."""
  astronaut = str(photos / "astronaut.png")
  out_dir = tmp_path / "out"
  predict.main([f"--out_dir={out_dir}", astronaut])  # No --workdir: the shipped model.
  shipped = predictor.load()
  names = list(shipped.layout.names)
  table = pd.read_csv(out_dir / "faces.csv")
  assert list(table.columns)[-5:] == [f"{n}_confidence" for n in names]
  face = json.loads((out_dir / "faces.json").read_text())["photos"][0]["faces"][0]
  crop = detect.crop(images.to_grey(images.read_picture(astronaut)),
                     np.array(face["crop_transform"]))
  want = shipped.confidences(crop)[0]
  np.testing.assert_allclose([face["confidence"][n] for n in names], want, atol=1e-4)
  np.testing.assert_allclose(table[[f"{n}_confidence" for n in names]].to_numpy()[0], want,
                             atol=1e-4)
  # The overlay: the keypoint below UNSURE is a ring, the others are filled.
  found = detect.Keypoints(detect.Face((10.0, 10.0, 60.0, 60.0), 1.0), np.eye(2, 3),
                           np.arange(10, dtype=np.float64) * 5 + 20,
                           np.array([0.9, 0.9, pictures.UNSURE - 0.01, 0.9, 0.9]))
  photo = pictures.Photo("x.png", 100, 100, [found], np.zeros((100, 100), np.float32))
  fig = pictures.plot_photo(photo, shipped.layout)
  drawn = [(tuple(np.round(line.get_xydata().ravel(), 3)), line.get_markerfacecolor())
           for line in fig.axes[0].lines if line.get_marker() == "o"]
  rings = [xy for xy, face_colour in drawn if face_colour == "none"]
  assert rings == [(40.0, 45.0)] and len(drawn) == 5  # Keypoint 2 (nose tip) at (40, 45).
  plt.close(fig)


@pytest.mark.parametrize("crop", pictures.CROPS)
@pytest.mark.parametrize("shape", [(120, 200), (200, 120), (50, 70)])
def test_framing_maps_a_spot_back_where_it_was(shape, crop):
  """A blurred spot's centre, seen through fit() and mapped back, is where it was drawn."""
  h, w = shape
  y0, x0 = 0.45 * h, 0.55 * w
  yy, xx = np.mgrid[:h, :w]
  sigma = 0.06 * max(h, w) if crop == "none" else 0.06 * min(h, w)
  picture = np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sigma ** 2)).astype(np.float32)
  image, framing = pictures.fit(picture, crop)
  assert image.shape == (96, 96, 1)
  mass = image[..., 0]
  centre = [(mass * np.arange(96)[None, :]).sum() / mass.sum(),
            (mass * np.arange(96)[:, None]).sum() / mass.sum()]
  x, y = framing.to_picture(np.array(centre))
  scale = framing.side / 96
  assert abs(x - x0) < 0.1 * max(scale, 1) and abs(y - y0) < 0.1 * max(scale, 1)


def test_resize_averages_areas_and_keeps_constants():
  image = np.arange(16, dtype=np.float32).reshape(4, 4)
  np.testing.assert_allclose(images.resize(image, 2, 2), [[2.5, 4.5], [10.5, 12.5]])
  assert np.allclose(images.resize(np.full((37, 53, 3), 0.25), 96, 96), 0.25)


def test_one_line_errors(workdir, kaggle_files, tmp_path, capsys, monkeypatch):
  test_csv, lookup_csv, _, lookup = kaggle_files
  out = tmp_path / "s.csv"
  no_feature = tmp_path / "lookup.csv"
  lookup.drop(columns=["FeatureName"]).to_csv(no_feature, index=False)
  err = _fails([f"--workdir={workdir}", f"--csv={test_csv}", f"--lookup={no_feature}",
                f"--out={out}"], capsys)
  assert err == f"error: {no_feature}: missing column FeatureName"
  lookup.assign(FeatureName=lookup["FeatureName"].where(lookup.index != 3, "chin_x")).to_csv(
      no_feature, index=False)
  err = _fails([f"--workdir={workdir}", f"--csv={test_csv}", f"--lookup={no_feature}",
                f"--out={out}"], capsys)
  assert err == f"error: {no_feature}: row 4: FeatureName 'chin_x' is no keypoint column of a " \
                "built-in layout"
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  err = _fails([f"--workdir={untrained}", f"--csv={test_csv}", f"--out={out}"], capsys)
  assert err.startswith(f"error: workdir {untrained}: no checkpoint to restore")
  assert not out.exists() and not (untrained / "checkpoints").exists()
  model = predictor.load(workdir)
  monkeypatch.setattr(predictor, "load", lambda workdir, which="best": model)
  lookup.assign(ImageId=lookup["ImageId"].where(lookup.index != 2, 99)).to_csv(
      no_feature, index=False)
  err = _fails(["--workdir=w", f"--csv={test_csv}", f"--lookup={no_feature}", f"--out={out}"],
               capsys)
  assert err == f"error: {no_feature}: row 3: ImageId 99 is not in {test_csv}"
  bad_test = tmp_path / "test.csv"
  frame = pd.read_csv(test_csv, dtype=str)
  frame.loc[2, "ImageId"] = "three"
  frame.to_csv(bad_test, index=False)
  err = _fails(["--workdir=w", f"--csv={bad_test}", f"--out={out}"], capsys)
  assert err == f"error: {bad_test}: row 3: ImageId is not a whole number: 'three'"
  frame.loc[2, "ImageId"] = "1"
  frame.to_csv(bad_test, index=False)
  err = _fails(["--workdir=w", f"--csv={bad_test}", f"--out={out}"], capsys)
  assert err == f"error: {bad_test}: row 3: ImageId 1 repeats row 1"
  not_image = tmp_path / "face.png"
  not_image.write_text("not a picture")
  assert "face.png: cannot be read as an image" in _fails(["--workdir=w", str(not_image)], capsys)
  assert "give either --csv or image files" in _fails(["--workdir=w"], capsys)
  empty = tmp_path / "empty"
  empty.mkdir()
  assert _fails(["--workdir=w", str(empty)], capsys).startswith(
      f"error: {empty}: folder holds no image files")
  assert "--crop applies with --nodetect" in _fails(["--workdir=w", "--crop=center",
                                                      str(not_image)], capsys)
  assert not out.exists()


def test_untrained_keypoints_are_left_empty_and_refused_in_submissions(loaded, kaggle_files,
                                                                      tmp_path, monkeypatch,
                                                                      capsys):
  test_csv, lookup_csv, images, lookup = kaggle_files
  five = [KAGGLE.names.index(n) for n in (
      "left_eye_center", "right_eye_center", "nose_tip", "mouth_left_corner",
      "mouth_right_corner")]
  trained = np.zeros(KAGGLE.num_coords, np.float32)
  for k in five:  # A run on a 5-point data set: 10 of the 30 columns learnt.
    trained[2 * k:2 * k + 2] = 1.0
  partial = dataclasses.replace(loaded, trained=trained)
  monkeypatch.setattr(predictor, "load", lambda workdir, which="best": partial)
  out = tmp_path / "predictions.csv"
  predict.main(["--workdir=w", f"--csv={test_csv}", f"--out={out}"])
  assert "untrained keypoints left empty: left_eye_inner_corner" in capsys.readouterr().out
  written = pd.read_csv(out)[list(KAGGLE.columns)]
  expected = np.clip(loaded.predict(images[..., None].astype(np.float32) / 255.0), 0, 96)
  np.testing.assert_allclose(written.iloc[:, trained > 0], expected[:, trained > 0], atol=1e-3)
  assert written.iloc[:, trained == 0].isna().all().all()  # Empty cells, not guesses.
  submission = tmp_path / "submission.csv"
  err = _fails(["--workdir=w", f"--csv={test_csv}", f"--lookup={lookup_csv}",
                f"--out={submission}"], capsys)
  asked = (trained[[KAGGLE.columns.index(n) for n in lookup["FeatureName"]]] == 0).sum()
  assert f"{asked} rows ask for keypoints this model was never trained on" in err
  assert "--allow_untrained" in err and not submission.exists()
  predict.main(["--workdir=w", f"--csv={test_csv}", f"--lookup={lookup_csv}",
                f"--out={submission}", "--allow_untrained"])
  assert "untrained keypoints submitted anyway" in capsys.readouterr().out
  assert len(pd.read_csv(submission)) == len(lookup)
  only_five = lookup[[trained[KAGGLE.columns.index(n)] > 0 for n in lookup["FeatureName"]]]
  only_five.to_csv(tmp_path / "five.csv", index=False)  # Asks for trained keypoints only: fine.
  predict.main(["--workdir=w", f"--csv={test_csv}", f"--lookup={tmp_path / 'five.csv'}",
                f"--out={submission}"])
  assert len(pd.read_csv(submission)) == len(only_five)
  face, _ = synthetic.generate(1, seed=8)
  picture = _save_rgb(tmp_path / "face.png", face[0])
  predict.main(["--workdir=w", "--nodetect", f"--out_dir={tmp_path}", picture])
  out = capsys.readouterr().out
  assert "untrained keypoints not shown: left_eye_inner_corner" in out
  named = {line.split()[0] for line in out.splitlines() if line.startswith("  ")} - {"overlay:"}
  assert named == {"left_eye_center", "right_eye_center", "nose_tip", "mouth_left_corner",
                   "mouth_right_corner"}  # The trained five only.

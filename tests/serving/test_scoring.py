"""Scoring a workdir on Kaggle-layout files; flip test-time augmentation; chunked reading."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from facekp_jax import evaluate
from facekp_jax.core import errors, geometry, keypoints
from facekp_jax.core import faces as faces_lib
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.data import kaggle, synthetic
from facekp_jax.model import tta
from facekp_jax.serving import predictor, robustness, scoring
from facekp_jax.training import loop
from tests.conftest import kaggle_frame, random_faces

K = keypoints.KAGGLE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config():
  config = tiny.get_config()
  config.num_epochs = 1
  config.data.synthetic_n = 24
  config.tta = True  # The final evaluation of training averages over flips.
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run") / "w")
  loop.train_and_evaluate(_config(), path)
  return path


@pytest.fixture(scope="module")
def model(workdir):
  return predictor.load(workdir, "latest")


def _write(path, images_u8, coords):
  synthetic.to_frame(images_u8, coords).to_csv(path, index=False)
  return str(path)


def _unmirror(predictions):
  """Independent of the code under test: x -> 95 - x, then left/right swapped."""
  out = np.array(predictions, np.float64)
  out[:, 0::2] = 95.0 - out[:, 0::2]
  return out[:, K.flip_coords]


def test_validation_split_scores_as_training_reported(workdir, tmp_path, capsys):
  """The same file, checkpoint and TTA give training's final numbers: one code path."""
  config = _config()
  _, val, _, _ = dataset_lib.load_dataset(config.data, config.seed)
  images = np.rint(val.images[..., 0] * 255).astype(np.uint8)
  csv = _write(tmp_path / "val.csv.gz", images, np.where(val.mask > 0, val.targets, np.nan))
  evaluate.main([f"--workdir={workdir}", f"--csv={csv}", "--checkpoint=latest"])
  out = capsys.readouterr().out
  trained = json.loads(open(os.path.join(workdir, "results.json")).read())
  scored = json.loads(open(os.path.join(workdir, "eval_val.json")).read())
  assert scored["tta"] is True  # Follows the run's config.tta by default.
  assert scored["step"] == trained["steps"] and scored["checkpoint"] == "latest"
  assert scored["count"] == trained["val_count"] == 30 * len(val)
  assert scored["rmse"] == pytest.approx(trained["val_rmse"], rel=1e-5)
  assert scored["nme"] == pytest.approx(trained["val_nme"], rel=1e-5)
  for name, value in trained["val_per_keypoint_rmse"].items():
    assert scored["per_keypoint_rmse"][name] == pytest.approx(value, rel=1e-5)
  assert os.path.getsize(os.path.join(workdir, "eval_val.png")) > 0
  assert "RMSE" in out and "nose_tip" in out and f"{scored['count']} coordinates scored" in out
  evaluate.main([f"--workdir={workdir}", f"--csv={csv}", "--checkpoint=latest", "--notta"])
  plain = json.loads(open(os.path.join(workdir, "eval_val.json")).read())
  assert plain["tta"] is False and plain["count"] == scored["count"]
  assert abs(plain["rmse"] - trained["val_rmse"]) > 1e-4  # Training did use TTA.
  assert not [n for n in os.listdir(workdir) if n.startswith(".tmp-")]


def test_only_present_coordinates_are_scored(model, tmp_path):
  images, coords = synthetic.generate(6, seed=11)
  coords[::2, 4:] = np.nan
  nose = 2 * K.names.index("nose_tip")
  coords[:, nose:nose + 2] = np.nan
  csv = _write(tmp_path / "masked.csv", images, coords)
  results, shown, shown_predictions = scoring.evaluate(model, csv)
  present = ~np.isnan(coords)
  assert results["count"] == present.sum() == 3 * 4 + 3 * 28
  predictions = model.predict(faces_lib.from_arrays(images, coords).images)
  assert results["rmse"] == pytest.approx(np.sqrt(np.mean((predictions - coords)[present] ** 2)),
                                          rel=1e-5)
  assert results["per_keypoint_rmse"]["nose_tip"] is None
  assert len(shown) == 6 and shown_predictions.shape == (6, 30)
  # The masked cells' text does not matter (empty or "nan"), nor does the chunking.
  frame = synthetic.to_frame(images, coords).astype(str).replace("nan", " NaN ")
  frame.to_csv(tmp_path / "other.csv", index=False)
  again, _, _ = scoring.evaluate(model, str(tmp_path / "other.csv"), chunk_rows=4)
  assert again["count"] == results["count"] and again["rmse"] == pytest.approx(results["rmse"])
  assert again["per_keypoint_rmse"] == pytest.approx(results["per_keypoint_rmse"])
  coords[:] = np.nan
  with pytest.raises(errors.DataError, match="no keypoint labels to score"):
    scoring.evaluate(model, _write(tmp_path / "none.csv", images, coords))


def test_flip_tta_of_a_symmetric_face_is_symmetric(model):
  images, _ = synthetic.generate(2, seed=4)
  faces = images.astype(np.float32)[..., None] / 255.0
  symmetric = 0.5 * (faces + faces[:, :, ::-1])
  with_tta = model.predict(symmetric, tta=True)
  np.testing.assert_allclose(_unmirror(with_tta), with_tta, atol=1e-4)
  plain = model.predict(symmetric)
  assert np.abs(_unmirror(plain) - plain).max() > 1e-2  # Without TTA it is not: the test bites.


def test_flip_average_maps_the_mirror_prediction_back():
  """An oracle that knows every face and its mirror: the average must be the truth."""
  faces = faces_lib.from_arrays(*synthetic.generate(3, seed=2))
  mirrored = geometry.hflip(faces, K)
  truth = {im.tobytes(): t for f in (faces, mirrored) for im, t in zip(f.images, f.targets)}
  oracle = lambda images: np.stack([truth[np.ascontiguousarray(im).tobytes()] for im in images])
  np.testing.assert_allclose(tta.flip_average(oracle, faces.images, K), faces.targets, atol=1e-5)
  np.testing.assert_allclose(_unmirror(mirrored.targets), faces.targets, atol=1e-5)


def test_chunked_reader_matches_the_whole_file_and_names_file_rows(write_csv):
  images, coords = random_faces(7, missing_every=3)
  path = write_csv("t.csv", images, coords)
  whole = kaggle.read_training_csv(path)
  chunks = list(kaggle.read_training_chunks(path, chunk_rows=3))
  assert [len(c) for c in chunks] == [3, 3, 1]
  for field in ("images", "targets", "mask"):
    np.testing.assert_array_equal(np.concatenate([getattr(c, field) for c in chunks]),
                                  getattr(whole, field))
  frame = kaggle_frame(images, coords)
  frame.loc[4, "Image"] = "1 2 3"
  frame.to_csv(path, index=False)
  with pytest.raises(errors.DataError, match=r"t.csv: row 5: Image has 3 pixel values"):
    list(kaggle.read_training_chunks(path, chunk_rows=3))
  frame = kaggle_frame(images, coords)
  frame["nose_tip_y"] = frame["nose_tip_y"].astype(object)
  frame.loc[6, "nose_tip_y"] = "abc"
  frame.to_csv(path, index=False)
  with pytest.raises(errors.DataError, match=r"t.csv: row 7: column nose_tip_y is not a number"):
    list(kaggle.read_training_chunks(path, chunk_rows=2))
  frame.drop(columns=["Image"]).to_csv(path, index=False)
  with pytest.raises(errors.DataError, match="t.csv: missing column Image"):
    list(kaggle.read_training_chunks(path))


def test_bad_csv_is_one_line_exit_2(workdir, tmp_path, capsys):
  frame = kaggle_frame(*random_faces(6))
  frame.loc[4, "Image"] = "1 2 3"
  bad = tmp_path / "bad.csv"
  frame.to_csv(bad, index=False)
  with pytest.raises(SystemExit) as e:
    evaluate.main([f"--workdir={workdir}", f"--csv={bad}"])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert err == f"error: {bad}: row 5: Image has 3 pixel values, expected 9216 (96x96)\n"
  assert not os.path.exists(os.path.join(workdir, "eval_bad.json"))
  with pytest.raises(SystemExit) as e:
    evaluate.main([f"--workdir={workdir}", f"--csv={bad}", "--checkpoint=first"])
  assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
  for angles in ("100", "ten"):
    with pytest.raises(SystemExit) as e:
      evaluate.main([f"--workdir={workdir}", f"--csv={bad}", f"--tta_rotations={angles}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: bad flag: --tta_rotations: tta_rotations "
                                              "must be angles in (0, 90] degrees")


def test_workdir_without_checkpoint_is_one_line_exit_2(workdir, tmp_path):
  empty = tmp_path / "untrained"
  empty.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), empty)
  csv = _write(tmp_path / "f.csv", *synthetic.generate(2, seed=1))
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "facekp_jax.evaluate", f"--workdir={empty}",
                         f"--csv={csv}"], capture_output=True, text=True, env=env, cwd=ROOT,
                        timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f"error: workdir {empty}: no checkpoint to restore")
  assert sorted(os.listdir(empty)) == ["config.json"]  # Nothing created in a workdir it reads.
  with pytest.raises(Exception, match="no config.json"):
    predictor.load(str(tmp_path / "nowhere"))


def test_untrained_keypoints_are_not_scored_and_robustness_is_written(tmp_path, capsys):
  images, coords = synthetic.generate(24, seed=4)
  five = [K.names.index(n) for n in (
      "left_eye_center", "right_eye_center", "nose_tip", "mouth_left_corner",
      "mouth_right_corner")]
  partial = np.full_like(coords, np.nan)
  for k in five:  # Like the real 5-point sets: 10 of the 30 columns labelled.
    partial[:, 2 * k:2 * k + 2] = coords[:, 2 * k:2 * k + 2]
  config = _config()
  config.data.train_csv = _write(tmp_path / "five.csv", images, partial)
  config.data.keypoints = "kaggle15"  # Named: 15 outputs, 10 never labelled (else mtfl5's 10).
  w = str(tmp_path / "w")
  loop.train_and_evaluate(config, w)
  full = _write(tmp_path / "full.csv", *synthetic.generate(8, seed=5))
  evaluate.main(["--workdir", w, "--csv", full, "--checkpoint=latest", "--robustness"])
  out = capsys.readouterr().out
  scored = json.loads(open(os.path.join(w, "eval_full.json")).read())
  assert scored["count"] == 8 * 10  # Only the trained keypoints of the 15 labelled.
  assert len(scored["untrained_keypoints"]) == 10 and "nose_tip" not in scored[
      "untrained_keypoints"]
  assert ["left_eye_inner_corner", "untrained"] in [line.split() for line in out.splitlines()]
  assert "robustness:" in out
  rob = scored["robustness"]["perturbations"]
  assert set(rob) == set(robustness.PERTURBATIONS) and rob["rot0"]["rmse"] == pytest.approx(
      scored["rmse"], rel=1e-5)
  for name in ("eval_full_ced.png", "eval_full_robustness.png"):
    assert os.path.getsize(os.path.join(w, name)) > 0

"""Scoring a workdir on Kaggle-layout files; flip test-time augmentation; chunked reading."""

import io
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


def test_the_flip_views_mean_maps_the_mirror_prediction_back():
  """An oracle that knows every face and its mirror: the average must be the truth."""
  faces = faces_lib.from_arrays(*synthetic.generate(3, seed=2))
  mirrored = geometry.hflip(faces, K)
  truth = {im.tobytes(): t for f in (faces, mirrored) for im, t in zip(f.images, f.targets)}
  oracle = lambda images: np.stack([truth[np.ascontiguousarray(im).tobytes()] for im in images])
  np.testing.assert_allclose(np.mean(tta.flip_views(oracle, faces.images, K), axis=0),
                             faces.targets, atol=1e-5)
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
  with pytest.raises(Exception, match="nowhere does not exist: give the workdir of a training"):
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


def _recorded_mean(workdir):
  """The training split's mean keypoints as the run recorded them, in Kaggle's column order."""
  with open(os.path.join(workdir, "trained_keypoints.json")) as f:
    mean = json.load(f)["mean"]
  return np.array([mean[n] for n in K.names], np.float64).reshape(-1)


def _scored(workdir, csv):
  with open(os.path.join(workdir, f"eval_{scoring.file_stem(str(csv))}.json")) as f:
    return json.load(f)


def _warnings(err, about):
  return [line for line in err.splitlines() if line.startswith("warning:") and about in line]


def test_a_model_no_better_than_the_mean_shape_gets_one_warning(workdir, model, tmp_path,
                                                               capsys):
  """The baseline is the training split's recorded mean shape for every face; the labels are
  chosen so that which side of it the model falls does not hang on how well it trained."""
  images, _ = synthetic.generate(6, seed=8)
  mean = np.tile(_recorded_mean(workdir), (6, 1))
  at_mean = _write(tmp_path / "at_mean.csv", images, mean)  # The mean shape scores ~0 px.
  evaluate.main([f"--workdir={workdir}", f"--csv={at_mean}", "--checkpoint=latest"])
  err = capsys.readouterr().err
  scored = _scored(workdir, at_mean)
  assert scored["mean_shape_rmse"] == pytest.approx(0.0, abs=1e-4)
  assert scored["mean_shape_from"] == "training split" and scored["beats_mean_shape"] is False
  [line] = _warnings(err, "mean shape")
  assert line.startswith("warning: this model (RMSE ") and line.endswith(f" on {at_mean}")
  assert "is no better than the mean shape (RMSE 0.0" in line and "not learnt yet" in line
  # Labelled with the model's own predictions: it beats the mean shape; no warning.
  own = model.predict(faces_lib.from_arrays(images, mean).images, tta=True)
  own_csv = _write(tmp_path / "own.csv", images, own)
  evaluate.main([f"--workdir={workdir}", f"--csv={own_csv}", "--checkpoint=latest"])
  err = capsys.readouterr().err
  scored = _scored(workdir, own_csv)
  assert scored["rmse"] < 1e-3 and scored["beats_mean_shape"] is True
  assert scored["mean_shape_rmse"] == pytest.approx(np.sqrt(np.mean((own - mean) ** 2)),
                                                    rel=1e-4)
  assert "warning" not in err


def test_a_workdir_without_the_recorded_mean_compares_with_the_files_own(workdir, tmp_path,
                                                                         capsys):
  """Older runs did not record the mean shape: the scored file's own mean stands in, and the
  JSON and the warning say so."""
  old = str(tmp_path / "old")
  shutil.copytree(workdir, old)
  record = os.path.join(old, "trained_keypoints.json")
  with open(record) as f:
    kept = {k: v for k, v in json.load(f).items() if k != "mean"}
  with open(record, "w") as f:
    json.dump(kept, f)
  images, _ = synthetic.generate(6, seed=9)
  coords = np.tile(_recorded_mean(workdir), (6, 1)) + np.random.default_rng(0).normal(
      0, 0.1, (6, 30))
  csv = _write(tmp_path / "near_mean.csv", images, coords)
  evaluate.main([f"--workdir={old}", f"--csv={csv}", "--checkpoint=latest"])
  err = capsys.readouterr().err
  scored = _scored(old, csv)
  file_mean_rmse = np.sqrt(np.mean((coords - coords.mean(axis=0)) ** 2))
  assert scored["mean_shape_rmse"] == pytest.approx(file_mean_rmse, rel=1e-4)
  assert scored["mean_shape_from"] == "scored file" and scored["beats_mean_shape"] is False
  [line] = _warnings(err, "mean shape")
  assert line.startswith("warning: this model (RMSE ") and "not learnt yet" in line
  assert line.endswith(f" on {csv} (the mean shape of the file's own labels: the workdir "
                       "predates the record of its training split's)")


def _csv_run(workdir, tmp_path):
  """A copy of the built-in-faces run ``workdir`` as if it had read its 24 faces from a CSV:
  the file holds the same faces and config.json names it, so the split is the same too."""
  config = _config()
  csv = _write(tmp_path / "faces.csv", *synthetic.generate(
      config.data.synthetic_n, seed=config.data.synthetic_seed))
  run = str(tmp_path / "csv_run")
  shutil.copytree(workdir, run)
  _edit_config(run, train_csv=csv)
  return run, csv


def _edit_config(run, **data):
  path = os.path.join(run, "config.json")
  with open(path) as f:
    saved = json.load(f)
  saved["data"].update(data)
  with open(path, "w") as f:
    json.dump(saved, f)


def test_the_training_file_is_warned_and_split_val_scores_its_held_out_faces(workdir, tmp_path,
                                                                             capsys):
  run, csv = _csv_run(workdir, tmp_path)
  with open(os.path.join(run, "results.json")) as f:
    trained = json.load(f)
  evaluate.main([f"--workdir={run}", f"--csv={csv}", "--checkpoint=latest"])
  err = capsys.readouterr().err
  scored = _scored(run, csv)
  assert scored["split"] == "all" and scored["is_training_file"] is True
  assert scored["num_faces"] == 24 and scored["training_faces"] == trained["num_train"] == 19
  assert scored["val_split"]["num_faces"] == trained["num_val"] == 5
  assert scored["val_split"]["rmse"] == pytest.approx(trained["val_rmse"], rel=1e-5)
  [line] = _warnings(err, "trained on")
  assert line.startswith(f"warning: {csv} is the file this run trained on: 19 of its 24 faces "
                         "were training faces, so these figures flatter the model; its 5 "
                         f"held-out validation faces score RMSE {trained['val_rmse']:.2f} px")
  assert line.endswith("use --split=val to score only the held-out faces")
  # A copy elsewhere is the same file; --split=val scores exactly training's validation split.
  copy = tmp_path / "elsewhere" / "copy.csv"
  copy.parent.mkdir()
  shutil.copy(csv, copy)
  evaluate.main([f"--workdir={run}", f"--csv={copy}", "--checkpoint=latest", "--split=val"])
  err = capsys.readouterr().err
  val = json.loads(open(os.path.join(run, "eval_copy_val.json")).read())
  assert val["split"] == "val" and val["is_training_file"] is True
  assert val["num_faces"] == trained["num_val"] and val["count"] == trained["val_count"]
  assert val["rmse"] == pytest.approx(trained["val_rmse"], rel=1e-5)
  assert not _warnings(err, "trained on")  # Only held-out faces: nothing flattered.


def test_split_val_of_any_other_file_is_a_usage_error(workdir, tmp_path, capsys):
  run, csv = _csv_run(workdir, tmp_path)
  text = open(csv).read()
  last = max(text.rfind(d) for d in "0123456789")
  other = tmp_path / "other.csv"  # The same size, one digit changed: not the same file.
  other.write_text(text[:last] + ("1" if text[last] != "1" else "2") + text[last + 1:])
  assert os.path.getsize(other) == os.path.getsize(csv)
  before = sorted(os.listdir(run))
  cases = [(run, other, f"error: bad flag: --split=val: {other} is not the file this run "
            f"trained on ({csv})"),
           (workdir, csv, "error: bad flag: --split=val: this run trained on the built-in "
            "synthetic faces")]
  for w, path, message in cases:
    with pytest.raises(SystemExit) as e:
      evaluate.main([f"--workdir={w}", f"--csv={path}", "--split=val"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1
  _edit_config(run, val_fraction=0.0)
  with pytest.raises(SystemExit) as e:
    evaluate.main([f"--workdir={run}", f"--csv={csv}", "--split=val"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith("error: bad flag: --split=val: this run held out "
                                              "no faces (data.val_fraction=0")
  _edit_config(run, val_csv="held_out.csv")
  with pytest.raises(SystemExit) as e:
    evaluate.main([f"--workdir={run}", f"--csv={csv}", "--split=val"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith(
      "error: bad flag: --split=val: this run validated on faces of their own (data.val_csv = "
      "held_out.csv)") and err.rstrip().endswith("score that file with --split=all")
  assert sorted(os.listdir(run)) == before  # Refused before anything is scored or written.


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_scoring_shows_its_progress_on_a_terminal_only(model, tmp_path, monkeypatch):
  csv = _write(tmp_path / "p.csv", *synthetic.generate(6, seed=3))
  for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
    monkeypatch.setattr(sys, "stderr", stream)
    scoring.evaluate(model, csv, chunk_rows=4, perturbed=True)
    text = stream.getvalue()
    assert ("scoring p.csv" in text and "robustness" in text) == shown, text

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from facekp_jax.core import errors, sharding
from facekp_jax.core import faces as faces_lib
from facekp_jax.data import augment, kaggle
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.training import config as config_lib
from facekp_jax.training import loop, steps
from tests.conftest import random_faces, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_config = tiny_config


def test_epoch_batches_cover_each_face_at_most_once_with_fixed_shapes():
  faces = faces_lib.Faces(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
                          * np.ones((1, 96, 96, 1)),
                          np.zeros((10, 30), np.float32), np.ones((10, 30), np.float32))
  config = _config(**{"batch_size": 3, "augment.brightness_prob": 0.0})
  seen = [b.images[:, 0, 0, 0] for b in loop.epoch_batches(faces, config, epoch=0)]
  assert [len(s) for s in seen] == [3, 3, 3]  # The remainder is dropped: fixed shapes.
  assert len(set(np.concatenate(seen))) == 9


def test_epoch_batches_are_a_function_of_seed_and_epoch(write_csv):
  faces = kaggle.read_training_csv(write_csv("t.csv", *random_faces(20)))
  config = _config()
  a = [b.images for b in loop.epoch_batches(faces, config, epoch=3)]
  b = [b.images for b in loop.epoch_batches(faces, config, epoch=3)]
  c = [b.images for b in loop.epoch_batches(faces, config, epoch=4)]
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


def test_no_validation_face_reaches_training(write_csv):
  """The split comes first: no validation face, nor a flipped copy of it, is ever trained on."""
  images, coords = random_faces(40, seed=1)
  config = _config(write_csv("t.csv", images, coords), **{
      "data.seed_copies": True, "augment.hflip_prob": 0.5, "augment.vflip_prob": 0.5})
  tr, val, _, _ = dataset_lib.load_dataset(config.data, config.seed)
  tr = augment.training_faces(tr, config)
  assert len(tr) == 4 * 32 and len(val) == 8

  def keys(imgs):
    return {im.tobytes() for im in np.round(imgs * 255).astype(np.uint8)}

  forbidden = set()
  for v in (val.images, val.images[:, :, ::-1], val.images[:, ::-1], val.images[:, ::-1, ::-1]):
    forbidden |= keys(v)
  seen = set()
  for epoch in range(3):
    for batch in loop.epoch_batches(tr, config, epoch):
      seen |= keys(batch.images)
  assert keys(tr.images) & seen  # The check itself can recognise a face.
  assert not seen & forbidden


def test_a_validation_file_replaces_the_split(write_csv):
  """data.val_csv: every face of the training file trains, and that file's faces validate."""
  train_csv = write_csv("t.csv", *random_faces(30, seed=1))
  config = _config(train_csv, **{"data.val_csv": write_csv("v.csv", *random_faces(10, seed=2)),
                                 "data.val_fraction": 0.0})
  tr, val, layout, _ = dataset_lib.load_dataset(config.data, config.seed)
  assert len(tr) == 30 and len(val) == 10 and layout.num_keypoints == 15
  np.testing.assert_array_equal(np.round(val.images[..., 0] * 255).astype(np.uint8),
                                random_faces(10, seed=2)[0])
  partial = pd.read_csv(config.data.val_csv).drop(columns=["nose_tip_x", "nose_tip_y"])
  config.data.val_csv = os.path.join(os.path.dirname(train_csv), "partial.csv")
  partial.to_csv(config.data.val_csv, index=False)  # Not the training layout's columns.
  with pytest.raises(errors.DataError, match=r"partial\.csv.*nose_tip"):
    dataset_lib.load_dataset(config.data, config.seed)
  # A split and a file at once: refused before anything is read, saying how to go on.
  config.data.val_fraction = 0.2
  assert config_lib.problems(config) == [
      "data.val_csv validates on its own faces and every training face trains: set "
      "data.val_fraction=0 (got 0.2)"]


def _run(config, workdir):
  return loop.train_and_evaluate(config, str(workdir))


def test_two_step_run_writes_every_output(tmp_path, monkeypatch):
  config = _config(**{"num_epochs": 1, "data.synthetic_n": 20})
  logged = {"info": [], "warning": []}
  for level, lines in logged.items():
    monkeypatch.setattr(loop.logging, level,
                        lambda msg, *a, lines=lines, **_: lines.append(str(msg) % a))
  results = _run(config, tmp_path / "w")
  w = tmp_path / "w"
  assert results["steps"] == 2
  # The figures say which weights they are (the last step's), and the log which the readers use.
  assert results["evaluated_step"] == 2 and results["best_checkpoint_step"] == 2
  assert "at step 2, the last; best checkpoint: step 2 (evaluate, predict" in logged["info"][-1]
  # Two steps of a tiny model are no better than the mean shape, and the log says so.
  assert results["val_rmse"] >= results["mean_shape_val_rmse"]
  assert logged["warning"] == [
      f"this model (RMSE {results['val_rmse']:.3f} px) is no better than the mean shape (RMSE "
      f"{results['mean_shape_val_rmse']:.3f} px): it has not learnt yet (train longer), or the "
      "labels do not match the faces on the validation split"]
  for name in ("config.json", "metrics.jsonl", "results.json", "predictions.png",
               "learning_curves.png", "per_keypoint_rmse.png"):
    assert (w / name).stat().st_size > 0, name
  lines = (w / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 1 and {"epoch", "train_loss", "val_rmse"} <= set(json.loads(lines[0]))
  saved = json.loads((w / "results.json").read_text())
  assert saved["val_rmse"] == pytest.approx(results["val_rmse"]) and saved["num_val"] == 4
  assert json.loads((w / "config.json").read_text())["data"]["synthetic_n"] == 20
  assert not [p for p in w.iterdir() if p.name.startswith(".tmp-")]


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
  config = _config(**{"num_epochs": 1, "data.synthetic_n": 24})
  a = _run(config, tmp_path / "a")
  b = _run(config, tmp_path / "b")
  assert a["val_rmse"] == b["val_rmse"] and a["val_per_keypoint_rmse"] == b["val_per_keypoint_rmse"]
  config.seed = 1
  assert _run(config, tmp_path / "c")["val_rmse"] != a["val_rmse"]


_DEVICE_RUN = """
import sys, numpy as np, jax
from configs import tiny
from facekp_jax.core import sharding
from facekp_jax.training import steps
from facekp_jax.core import errors
from facekp_jax.core import faces as faces_lib
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.data import kaggle
from facekp_jax.data import synthetic
config = tiny.get_config()
config.learning_rate = 1e-4
mesh = sharding.make_mesh()
assert mesh.devices.size == int(sys.argv[2]), mesh
trainer = steps.Trainer(config, mesh)
state = trainer.init_state()
init = jax.device_get(state.params)
faces = faces_lib.from_arrays(*synthetic.generate(32, seed=1))
order = np.random.default_rng(0).permutation(len(faces))
for i in range(len(faces) // 8):
  b = faces.take(order[i * 8:(i + 1) * 8])
  batch = {"images": b.images, "targets": b.targets, "mask": b.mask}
  state, _ = trainer.train_step(state, sharding.to_global(batch, mesh))
  assert state.params["output"]["kernel"].sharding.is_fully_replicated
arrays = {}
for tag, tree in (("init", init), ("final", jax.device_get(state.params))):
  for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
    arrays[tag + jax.tree_util.keystr(k)] = v
np.savez(sys.argv[1], **arrays)
"""


def _params_on(devices, path):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  subprocess.run([sys.executable, "-c", _DEVICE_RUN, str(path), str(devices)], check=True,
                 env=env, cwd=ROOT)
  return dict(np.load(path))


def test_one_and_four_devices_give_the_same_parameters(tmp_path):
  one = _params_on(1, tmp_path / "one.npz")
  four = _params_on(4, tmp_path / "four.npz")
  assert one.keys() == four.keys()
  again = _params_on(1, tmp_path / "again.npz")
  for k in one:
    np.testing.assert_array_equal(one[k], again[k])  # Same device count: bit-identical.
  finals = [k for k in one if k.startswith("final")]
  moved = np.median([np.abs(one[k] - one["init" + k[5:]]).max() for k in finals])
  assert moved > 10 * 1e-5  # Four Adam steps move parameters far more than the tolerance.
  for k in one:
    np.testing.assert_allclose(one[k], four[k], atol=1e-5, rtol=0, err_msg=k)


def test_config_check_refuses_impossible_settings():
  config_lib.check_config(_config(), num_devices=4)
  config = _config(**{"batch_size": 6, "data.rows": "some", "augment.hflip_prob": 1.5})
  with pytest.raises(errors.ConfigError) as e:
    config_lib.check_config(config, num_devices=4)
  msg = str(e.value)
  assert "batch_size 6 does not divide evenly over 4 devices" in msg
  assert "data.rows must be 'complete' or 'all'" in msg and "augment.hflip_prob" in msg


def test_final_fit_on_every_face_has_no_validation_and_its_last_checkpoint_is_the_model(
    tmp_path):
  from facekp_jax.serving import predictor
  config = _config(**{"num_epochs": 1, "data.synthetic_n": 24, "data.val_fraction": 0.0})
  results = _run(config, tmp_path / "w")
  assert results["num_train"] == 24 and results["num_val"] == 0 and results["steps"] == 3
  assert "val_rmse" not in results and results["best_checkpoint_step"] is None
  record = json.loads((tmp_path / "w" / "metrics.jsonl").read_text())
  assert "val_rmse" not in record and record["train_rmse"] > 0
  assert (tmp_path / "w" / "learning_curves.png").exists()
  assert not (tmp_path / "w" / "predictions.png").exists()
  assert predictor.load(str(tmp_path / "w"), "best").step == 3  # No best: the latest.


def test_new_config_checks_name_their_fields():
  config = _config(**{"augment.geometry_prob": 2.0, "augment.scale_range": (1.2, 0.8),
                      "augment.rotate_deg": -5.0, "ema_decay": 1.0, "loss": "l3",
                      "data.val_fraction": 1.0})
  with pytest.raises(errors.ConfigError) as e:
    config_lib.check_config(config, num_devices=1)
  msg = str(e.value)
  for part in ("augment.geometry_prob must be in [0, 1]", "augment.scale_range must be",
               "augment.rotate_deg must be in [0, 180]", "ema_decay must be in [0, 1)",
               "loss must be one of", "data.val_fraction must be in [0, 1)"):
    assert part in msg, part


def test_labels_outside_the_frame_train_the_regression_head_but_not_heatmaps():
  rng = np.random.default_rng(0)
  targets = rng.uniform(20, 70, (8, 30)).astype(np.float32)
  targets[:, 0] = 110.0  # left_eye_center_x past the right edge: a real, plausible label.
  batch = {"images": rng.random((8, 96, 96, 1), dtype=np.float32), "targets": targets,
           "mask": np.ones((8, 30), np.float32)}
  mesh = sharding.make_mesh()
  counts = {}
  for head, margin in (("regression", 0.0), ("heatmap", 0.0), ("heatmap", 16.0)):
    config = _config(**{"model.head": head, "model.heatmap_margin": margin})
    trainer = steps.Trainer(config, mesh)
    _, metrics = trainer.train_step(trainer.init_state(), sharding.to_global(batch, mesh))
    counts[head, margin] = float(metrics["count"])
  # Both coordinates of 8 points leave the loss of maps that end at the frame, not of maps
  # with a 16 px margin (x = 110 < 111.5).
  assert counts == {("regression", 0.0): 240.0, ("heatmap", 0.0): 224.0,
                    ("heatmap", 16.0): 240.0}
  np.testing.assert_array_equal(steps.in_frame(jnp.asarray(targets))[0, :4], [0, 0, 1, 1])
  np.testing.assert_array_equal(steps.in_frame(jnp.asarray(targets), 16.0)[0, :4], 1)

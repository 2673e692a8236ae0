"""experiments/parity.py without TensorFlow: Keras' output layout, the arms, budget, scoring."""

import os

import numpy as np
import pytest

from experiments import parity
from facekp_jax.core import keypoints
from facekp_jax.serving import robustness
from tests.conftest import kaggle_frame, random_faces

K = keypoints.KAGGLE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# MTFL's labelled columns in the order keras_seed_real.load gives them (the file's order).
MTFL_COLUMNS = ["left_eye_center_x", "left_eye_center_y", "right_eye_center_x",
                "right_eye_center_y", "nose_tip_x", "nose_tip_y", "mouth_left_corner_x",
                "mouth_left_corner_y", "mouth_right_corner_x", "mouth_right_corner_y"]


def test_keras_outputs_land_in_their_kaggle_columns():
  columns = ["nose_tip_y", "left_eye_center_x", "mouth_right_corner_x"]  # Any order.
  pred = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
  out = parity.to_layout(pred, np.array(columns))
  assert out.shape == (2, 30)
  for j, c in enumerate(columns):
    np.testing.assert_array_equal(out[:, K.columns.index(c)], pred[:, j])
  assert np.isnan(np.delete(out, [K.columns.index(c) for c in columns], axis=1)).all()
  with pytest.raises(ValueError, match="not in Kaggle"):
    parity.to_layout(pred, ["nose_x", "nose_tip_y", "left_eye_center_x"])


def test_each_arm_changes_exactly_its_fields_to_keras_behaviour():
  budget = parity.Budget(keras_epochs=4, faces=6120)
  ref = parity.flat(parity.arm_config(parity.REFERENCE, 0, budget, "train.csv"))
  assert ref["model.head"] == "regression" and ref["data.val_fraction"] == 0.0
  assert ref["data.train_csv"] == "train.csv" and ref["batch_size"] == 32
  assert (ref["learning_rate"], ref["schedule"]) == (1e-4, "constant")  # Keras' step.
  assert ref["num_epochs"] == 8 and ref["model.kernel_init"] == "lecun_normal"
  assert ref["adam_eps"] == 1e-8 and ref["model.output_scale"] == 48.0
  assert ref["augment.hflip_prob"] == 0.5 and ref["augment.brightness_prob"] == 0.5
  assert not ref["data.flip_copies"]
  assert all(ref[k] == (list(v) if isinstance(v, tuple) else v) or ref[k] == v
             for k, v in parity.PINNED.items())  # Issue 17's recipe, whatever resnet.py says.
  assert set(parity.WHY) == set(parity.ARMS) - {parity.REFERENCE}
  assert parity.DIFFERENCES == {  # Issue 17's differences, each set to what Keras does.
      "glorot": {"model.kernel_init": "glorot_uniform"}, "eps1e-7": {"adam_eps": 1e-7},
      "raw-pixels": {"model.output_scale": 1.0, "model.output_offset": 0.0},
      "static-flips": {"data.flip_copies": True, "augment.hflip_prob": 0.0},
      "no-brightness": {"augment.brightness_prob": 0.0}}
  fields = [set(d) for d in parity.DIFFERENCES.values()]
  assert sum(map(len, fields)) == len(set().union(*fields))  # No field in two differences.
  assert set(parity.ARMS["all-keras"]) == set().union(*fields)
  for arm, overrides in parity.ARMS.items():
    cfg = parity.flat(parity.arm_config(arm, 0, budget, "train.csv"))
    changed = {k for k in ref if cfg[k] != ref[k]}
    expected = set(overrides) | ({"num_epochs"} if cfg["data.flip_copies"] else set())
    assert changed == expected, arm
    assert all(cfg[k] == v for k, v in overrides.items()), arm
  seed1 = parity.flat(parity.arm_config(parity.REFERENCE, 1, budget, "train.csv"))
  assert {k for k in ref if seed1[k] != ref[k]} == {"seed"}


def test_every_run_sees_the_same_number_of_training_images():
  budget = parity.Budget(keras_epochs=4, faces=6120)
  assert budget.images == 48_960  # Keras: 4 epochs of 6120 faces + 6120 mirrors.
  assert budget.jax_epochs(flip_copies=False) == 8 and budget.jax_epochs(flip_copies=True) == 4
  for arm in parity.ARMS:
    cfg = parity.arm_config(arm, 0, budget, "train.csv")
    per_epoch = budget.faces * (2 if cfg.data.flip_copies else 1)
    assert cfg.num_epochs * per_epoch == budget.images, arm
  assert parity.Budget(12, 6120).images == 146_880


def test_plan_runs_every_arm_and_seed_once_with_the_whole_gap_early():
  arms = list(parity.ARMS)
  runs = parity.plan([0, 1], [0, 2], arms)
  assert sorted(runs) == sorted([("keras", 0), ("keras", 1)] + [(a, s) for s in (0, 2)
                                                                 for a in arms])
  assert runs[:4] == [("keras", 0), ("jax-default", 0), ("all-keras", 0), ("keras", 1)]
  assert parity.plan([0], [0], ["glorot"]) == [("keras", 0), ("glorot", 0)]


def test_keras_predictions_are_scored_by_evaluate_on_the_perturbed_faces(tmp_path):
  images, coords = random_faces(12, seed=3)
  coords[:, [i for i, c in enumerate(K.columns) if c not in MTFL_COLUMNS]] = np.nan
  csv = tmp_path / "held.csv"
  kaggle_frame(images, coords).to_csv(csv, index=False)
  sets = parity.keras_sets(str(csv), str(tmp_path / "sets"))
  assert set(sets) == {"plain", *robustness.PERTURBATIONS}
  faces = parity.kaggle.read_training_csv(str(csv))
  idx = [K.columns.index(c) for c in MTFL_COLUMNS]

  def keras_output(name, offset=0.0):
    moved = faces if name == "plain" else robustness.perturb(faces, name)
    with np.load(sets[name][0]) as f:
      np.testing.assert_array_equal(f["images"], moved.images)
    return parity.to_layout(moved.targets[:, idx] + offset, MTFL_COLUMNS)

  # Perfect predictions of every set score zero everywhere (each set found by its images).
  perfect = {digest: keras_output(name) for name, (_, digest) in sets.items()}
  record = parity.score_keras(perfect, str(csv), MTFL_COLUMNS, str(tmp_path))
  assert record["rmse"] == 0.0 and record["heldout_faces"] == 12
  assert record["heldout_count"] == 12 * 10
  assert all(v == 0.0 for v in record["robustness"].values())
  # One pixel off every coordinate: RMSE 1 on the plain faces and under each perturbation.
  off = {digest: keras_output(name, 1.0) for name, (_, digest) in sets.items()}
  record = parity.score_keras(off, str(csv), MTFL_COLUMNS, str(tmp_path))
  assert record["rmse"] == pytest.approx(1.0)
  assert record["rmse_rot+-20"] == pytest.approx(1.0)
  assert record["ratio_rot+-30"] == pytest.approx(1.0)
  # A set Keras did not predict is an error, not a silent mismatch.
  missing = dict(perfect)
  del missing[sets["rot+20"][1]]
  with pytest.raises(KeyError, match="no Keras predictions"):
    parity.score_keras(missing, str(csv), MTFL_COLUMNS, str(tmp_path))

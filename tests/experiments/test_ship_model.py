"""experiments/ship_model.py and w300.py: which faces each mode trains on and scores."""

import os

import numpy as np
import pandas as pd
import pytest

from experiments import ship_model, w300
from facekp_jax.core import keypoints
from facekp_jax.data import pts
from facekp_jax.training import config as config_lib
from tests.conftest import kaggle_frame, random_faces


def test_cross_trains_on_the_lfw_rows_and_scores_the_web_rows(tmp_path, monkeypatch):
  monkeypatch.setattr(ship_model, "LFW_ROWS", 6)
  images, coords = random_faces(10)
  source = tmp_path / "mtfl.csv"
  kaggle_frame(images, coords).to_csv(source, index=False)
  train, scored = ship_model.data_files("cross", str(source), str(tmp_path / "s"))
  whole = pd.read_csv(source)
  pd.testing.assert_frame_equal(pd.read_csv(train), whole.iloc[:6].reset_index(drop=True))
  pd.testing.assert_frame_equal(pd.read_csv(scored), whole.iloc[6:].reset_index(drop=True))
  assert ship_model.data_files("ship", str(source), str(tmp_path / "s")) == (str(source), None)
  config = ship_model.recipe(train)
  assert config.data.val_fraction == 0 and config.num_epochs == 25 and not config.data.keypoints
  # Today's default recipe otherwise.
  today = config_lib.defaults()
  assert (config.schedule, config.loss, config.heatmap_loss) == (
      today.schedule, today.loss, today.heatmap_loss)
  # The model shipped before issue 26 (and w300.py's committed figures), whatever today's.
  before = ship_model.recipe(train, before_26=True)
  assert (before.num_epochs, before.schedule, before.learning_rate, before.batch_size,
          before.loss, before.heatmap_loss) == (50, "constant", 1e-4, 32, "mse", 0.0)


def test_heldout_is_ablates_split_disjoint_and_whole(tmp_path):
  images, coords = random_faces(20)
  source = tmp_path / "mtfl.csv"
  kaggle_frame(images, coords).to_csv(source, index=False)
  train, scored = ship_model.data_files("heldout", str(source), str(tmp_path / "s"))
  a, b = pd.read_csv(train)["Image"], pd.read_csv(scored)["Image"]
  assert len(a) == 16 and len(b) == 4 and not set(a) & set(b)


def test_w300_trains_on_the_other_two_sources(tmp_path):
  rng = np.random.default_rng(0)
  for source in w300.SOURCES:
    points = rng.uniform(60, 190, (2, 68, 2))
    pts.write_folder(str(tmp_path / "w300" / source), rng.integers(0, 256, (2, 256, 256),
                                                                   dtype=np.uint8), points,
                     [f"{source}{j}" for j in range(2)])
  folder = w300.training_folder("afw", str(tmp_path / "w300"), str(tmp_path / "s"))
  assert sorted(os.listdir(folder)) == ["helen", "lfpw"]
  faces, layout, names = pts.read_folder(folder)
  assert layout is keypoints.W300 and len(faces) == 4
  assert all(n.split(os.sep)[0] in ("helen", "lfpw") for n in names)


def test_balanced_repeats_the_web_rows_until_each_source_is_half(tmp_path, monkeypatch):
  monkeypatch.setattr(ship_model, "LFW_ROWS", 7)
  images, coords = random_faces(11)  # 7 LFW rows, 4 web rows: 3 of them drawn again.
  source = tmp_path / "mtfl.csv"
  kaggle_frame(images, coords).to_csv(source, index=False)
  train, scored = ship_model.data_files("balanced", str(source), str(tmp_path / "s"))
  whole, rows = pd.read_csv(source), pd.read_csv(train)
  assert scored is None and len(rows) == 14
  pd.testing.assert_frame_equal(rows.iloc[:11], whole)
  again = rows["Image"].iloc[11:]
  assert set(again) <= set(whole["Image"].iloc[7:]) and again.nunique() == 3
  # As many steps as the ship mode's 25 epochs of the 11 rows, to the nearest epoch.
  assert ship_model.balanced_epochs(11, 14) == 20
  assert ship_model.balanced_epochs(7650, 8302) == 23
  monkeypatch.setattr(ship_model, "LFW_ROWS", 3)  # More web rows than LFW rows: refused.
  with pytest.raises(ValueError, match="8 web rows, more than its 3 LFW rows"):
    ship_model.balanced_rows(str(source), str(tmp_path / "b.csv"))

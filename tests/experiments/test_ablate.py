"""experiments/ablate.py end to end on the tiny model: outputs, resume, held-out scoring."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from experiments import ablate
from facekp_jax.core import keypoints
from facekp_jax.data import synthetic
from facekp_jax.training import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--model=tiny", "--epochs=1", "--set", "batch_size=8"]


def _run(tmp_path, *args):
  """One study in its own process (JAX's compilation cache stays out of the test process)."""
  out = subprocess.run(
      [sys.executable, "-m", "experiments.ablate", *args, f"--scratch={tmp_path / 'scratch'}",
       f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


def test_tiny_study_writes_table_plot_json_and_a_rerun_skips_finished_runs(tmp_path):
  args = ["--study=flip", "--arms=swap,no-flip", "--seeds=2", "--faces=64", *TINY]
  first = _run(tmp_path, *args)
  assert first.count("RMSE") == 4 and "done before" not in first
  folder = tmp_path / "out" / "flip" / "synthetic"
  table = (folder / "table.md").read_text()
  assert "| swap |" in table and "| no-flip | `augment.hflip_prob=0.0` |" in table
  assert " ± " in table and "--study=flip" in table
  assert (folder / "rmse_nme.png").stat().st_size > 0
  results = json.loads((folder / "results.json").read_text())
  assert [a["name"] for a in results["arms"]] == ["swap", "no-flip"]
  for arm in results["arms"]:
    assert [r["seed"] for r in arm["runs"]] == [0, 1] and arm["summary"]["n"] == 2
    assert all(r["rmse"] > 0 and r["nme"] > 0 for r in arm["runs"])
  assert results["arms"][1]["summary"]["paired_n"] == 2
  # Each seed scores every arm on the same validation faces.
  for seed in (0, 1):
    assert len({a["runs"][seed]["num_val"] for a in results["arms"]}) == 1
  assert not any(p.name == "checkpoints" for p in (tmp_path / "out").rglob("*"))

  again = _run(tmp_path, *args)
  assert again.count("done before") == 4
  assert json.loads((folder / "results.json").read_text())["arms"] == results["arms"]


def test_rows_study_scores_both_arms_on_the_same_held_out_faces(tmp_path):
  _run(tmp_path, "--study=rows", "--seeds=1", "--faces=120", *TINY)
  results = json.loads((tmp_path / "out" / "rows" / "synthetic" / "results.json").read_text())
  complete, everything = (a["runs"][0] for a in results["arms"])
  assert results["heldout"] and results["heldout_faces"] == 24
  assert complete["heldout_count"] == everything["heldout_count"]
  assert complete["num_train"] < everything["num_train"]  # Complete rows are a minority.
  assert results["common"] == {"data.synthetic_missing": True}
  assert results["heldout_baseline_rmse"] > 0
  # Scoring differently (TTA with turned views) re-scores a finished run, trains nothing.
  run = tmp_path / "scratch" / complete["run"]
  config = config_lib.read_config(str(run))
  config.tta, config.tta_rotations = True, (10.0,)
  heldout = next((tmp_path / "scratch" / "data").glob("*-heldout.csv"))
  rescored = ablate.run_one(config, str(run), str(heldout))
  assert rescored["skipped"] and (run / "ablate-tta-flip-rot10.json").exists()
  assert rescored["rmse"] != complete["rmse"] and rescored["num_train"] == complete["num_train"]
  assert ablate.run_one(config_lib.read_config(str(run)), str(run), str(heldout))["rmse"] == (
      complete["rmse"])  # Its own scoring: the record as it was.


def _mtfl_like(path, n):
  """Built-in faces labelled like MTFL: eye centres, nose tip and mouth corners only."""
  images, coords = synthetic.generate(n, seed=3)
  frame = synthetic.to_frame(images, coords)
  kept = {f"{k}_{a}" for k in ("left_eye_center", "right_eye_center", "nose_tip",
                               "mouth_left_corner", "mouth_right_corner") for a in "xy"}
  for column in keypoints.KAGGLE.columns:
    if column not in kept:
      frame[column] = np.nan
  frame.to_csv(path, index=False)
  return str(path)


def test_rows_study_on_real_faces_blanks_mouth_corners_of_the_pool_only(tmp_path):
  mtfl = _mtfl_like(tmp_path / "mtfl.csv", 100)
  _run(tmp_path, "--study=rows", "--dataset=mtfl", f"--mtfl_csv={mtfl}", "--faces=0",
       "--seeds=1", *TINY)
  results = json.loads((tmp_path / "out" / "rows" / "mtfl" / "results.json").read_text())
  complete, everything = (a["runs"][0] for a in results["arms"])
  assert results["heldout_faces"] == 20
  assert complete["heldout_count"] == everything["heldout_count"] == 20 * 10  # All 5 points.
  data_dir = tmp_path / "scratch" / "data"
  pool = pd.read_csv(data_dir / "mtfl-partial70-pool.csv")
  only = pd.read_csv(data_dir / "mtfl-partial70-pool-complete.csv")
  blank = pool["mouth_left_corner_x"].isna()
  assert blank.equals(pool["mouth_right_corner_y"].isna()) and 0.5 < blank.mean() < 0.9
  assert pool["nose_tip_x"].notna().all() and len(only) == (~blank).sum()
  assert only["mouth_left_corner_x"].notna().all()
  # Each run trains on its validation-split share of its own file.
  assert complete["num_train"] + complete["num_val"] == len(only)
  assert everything["num_train"] + everything["num_val"] == len(pool)


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path, monkeypatch):
  real = ablate.run_one

  def flaky(config, workdir, heldout_csv, robustness=False):
    if config.augment.hflip_prob == 0.0:
      raise FloatingPointError("non-finite training loss at step 3")
    return real(config, workdir, heldout_csv, robustness)

  monkeypatch.setattr(ablate, "run_one", flaky)
  results = ablate.run_study(
      "flip", "synthetic", ablate.Budget("tiny", 1, 48), [0], arms=["swap", "no-flip"],
      settings=[("batch_size", 8)], scratch=str(tmp_path / "s"), out=str(tmp_path / "o"),
      log=lambda *_: None)
  swap, no_flip = results["arms"]
  assert swap["summary"]["n"] == 1 and no_flip["summary"]["n"] == 0
  assert no_flip["summary"]["failed"] == 1 and "non-finite" in no_flip["runs"][0]["error"]
  table = (tmp_path / "o" / "flip" / "synthetic" / "table.md").read_text()
  assert "| no-flip | `augment.hflip_prob=0.0` | — | — | — |" in table and "(1 failed)" in table
  assert "FloatingPointError: non-finite training loss" in table

  def never(*args, **kwargs):
    raise AssertionError("--tables_only trained a run")

  monkeypatch.setattr(ablate, "run_one", lambda config, workdir, *a: (
      real(config, workdir, *a) if os.path.exists(os.path.join(workdir, "ablate.json"))
      else never()))
  tables = ablate.run_study(
      "flip", "synthetic", ablate.Budget("tiny", 1, 48), [0, 1], arms=["swap", "no-flip"],
      settings=[("batch_size", 8)], scratch=str(tmp_path / "s"), out=str(tmp_path / "o"),
      log=lambda *_: None, tables_only=True)  # Only swap's seed 0 finished: nothing trains.
  assert [[r["seed"] for r in a["runs"]] for a in tables["arms"]] == [[0], []]


def test_relative_overrides_and_arms_of_every_study_resolve_to_valid_configs(tmp_path):
  from facekp_jax.training import config as config_lib
  for name, study in ablate.STUDIES.items():
    for dataset, budget in study.budgets.items():
      csv = _mtfl_like(tmp_path / "mtfl.csv", 4) if dataset == "mtfl" else ""
      base = ablate.budget_config(budget, dataset, csv, [])
      for arm in study.arms:
        config, applied = ablate.arm_config(base, study, dataset, arm, seed=0)
        config_lib.check_config(config, num_devices=1)
        assert set(applied) == set(arm.overrides_for(dataset)), (name, arm.name)
  size = ablate.STUDIES["size"]
  base = ablate.budget_config(ablate.Budget("small", 1, 64), "synthetic", "", [])
  wide, _ = ablate.arm_config(base, size, "synthetic", size.arms[4], 0)
  assert wide.model.stage_filters == ((32, 32, 128), (64, 64, 256))
  three, _ = ablate.arm_config(base, size, "synthetic", size.arms[5], 0)
  assert len(three.model.stage_filters) == len(three.model.stage_blocks) == 3


def test_studies_run_the_recipe_their_figures_ran_and_study_schedule_todays(tmp_path):
  from facekp_jax.training import config as config_lib
  today = config_lib.defaults()
  recipe = ("schedule", "learning_rate", "batch_size", "warmup_epochs")
  csv = _mtfl_like(tmp_path / "mtfl.csv", 4)
  full = ablate.budget_config(ablate.Budget("full", 25, 0), "mtfl", csv, [])
  assert [full[k] for k in recipe] == ["constant", 1e-4, 32, 0.0]
  assert [today[k] for k in recipe] != [full[k] for k in recipe]  # Else the pin says nothing.
  small = ablate.budget_config(ablate.Budget("small", 1, 64), "synthetic", "", [])
  assert (small.schedule, small.learning_rate) == ("constant", 1e-3)  # The size's own rate.
  # The loss and map levels every study ran (today's differ: else the pin says nothing).
  loss = lambda c: (c.loss, c.heatmap_loss, c.model.heatmap_stages)
  assert loss(full) == ("mse", 0.0, 2) and loss(today) != loss(full)
  study = ablate.STUDIES["schedule"]
  before, batch64, now, wing, whole = (ablate.arm_config(full, study, "mtfl", arm, 0)[0]
                                       for arm in study.arms)
  assert [before[k] for k in recipe] == [full[k] for k in recipe]
  assert [batch64[k] for k in recipe] == ["onecycle", 4e-3, 64, 0.0]  # What its figure ran.
  assert [now[k] for k in recipe] == [today[k] for k in recipe]
  assert [wing[k] for k in recipe] == [today[k] for k in recipe]  # Today's, but for the loss.
  assert loss(now) == loss(full) and loss(wing) == ("wing", 0.0, 2)
  assert [whole[k] for k in recipe] == [today[k] for k in recipe] and loss(whole) == loss(today)
  defaults_study = ablate.STUDIES["defaults"]
  new_default = ablate.arm_config(full, defaults_study, "mtfl", defaults_study.arms[1], 0)[0]
  assert ablate.config_hash(new_default) == ablate.config_hash(before)  # One run, two studies.


def test_bad_settings_and_scratch_in_the_repository_are_refused(tmp_path):
  with pytest.raises(SystemExit):
    ablate.main(["--study=flip", f"--scratch={ROOT}/runs/x"])
  with pytest.raises(SystemExit):
    ablate.main(["--study=rows", "--dataset=kaggle", f"--scratch={tmp_path}"])
  with pytest.raises(SystemExit):  # Unknown arm: one line, exit 2, before any run.
    ablate.main(["--study=rows", "--arms=some", f"--scratch={tmp_path}", "--epochs=1"])
  with pytest.raises(KeyError, match="no_such_field"):
    ablate.set_field(ablate.budget_config(ablate.Budget("tiny", 1, 8), "synthetic", "", []),
                     "augment.no_such_field", 1)


def test_seeds_are_a_count_or_a_list_and_none_is_refused():
  assert ablate.parse_seeds("3") == [0, 1, 2]
  assert ablate.parse_seeds("0,") == [0]
  assert ablate.parse_seeds("4,7") == [4, 7]
  for bad in ("0", ",", "-1,", "x"):
    with pytest.raises(ValueError):
      ablate.parse_seeds(bad)


def test_a_run_of_some_arms_keeps_the_others_figures(tmp_path):
  """``--arms`` runs some arms: the results file keeps the arms it did not run, in the study's
  order, when it is of the same study, data and budget; else this run's figures alone."""
  path = str(tmp_path / "results.json")
  head = {"study": "s", "dataset": "mtfl", "budget": {"model": "full", "epochs": 25, "faces": 0},
          "settings": {}, "heldout_faces": 1530}
  arm = lambda name: {"name": name, "runs": [{"seed": 0, "rmse": float(len(name))}]}
  earlier = dict(head, command="run a; run b", arms=[arm("a"), arm("bb")])
  with open(path, "w") as f:
    json.dump(earlier, f)
  now = dict(head, command="run c", arms=[arm("ccc")])
  merged = ablate.with_earlier_arms(now, path, ["a", "ccc", "bb"])
  assert [a["name"] for a in merged["arms"]] == ["a", "ccc", "bb"]
  assert merged["command"] == "run a; run b; run c"
  rerun = ablate.with_earlier_arms(dict(head, command="run b", arms=[arm("bb")]), path,
                                   ["a", "ccc", "bb"])
  assert [a["name"] for a in rerun["arms"]] == ["a", "bb"] and rerun["command"] == "run a; run b"
  other = dict(now, budget={"model": "full", "epochs": 50, "faces": 0})
  assert ablate.with_earlier_arms(other, path, ["a", "ccc", "bb"]) is other
  assert ablate.with_earlier_arms(now, str(tmp_path / "none.json"), []) is now

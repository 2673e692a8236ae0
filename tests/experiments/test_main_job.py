"""experiments/main_job.py: one timed run of the main job, and its table."""

import os
import sys

import pytest

from experiments import main_job


def test_a_run_is_timed_scored_and_cleaned_up_and_cold_starts_an_empty_cache(tmp_path,
                                                                           monkeypatch):
  monkeypatch.setattr(main_job, "COMMAND", [sys.executable, "-m", "facekp_jax.main",
                                            "--config=configs/tiny.py"])
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / "stale-cache").write_text("from another run")
  record = main_job.run_once("cold", 3, str(cache), str(tmp_path))
  assert record["arm"] == "cold" and record["seed"] == 3 and record["epochs"] == 2
  assert record["wall_seconds"] > 0 and 0 < record["val_rmse"] < 96
  assert "stale-cache" not in os.listdir(cache) and os.listdir(cache)  # Emptied, then filled.
  assert os.listdir(tmp_path) == ["cache"]  # The run's workdir is gone.


def test_a_failing_run_says_its_command_and_last_line(tmp_path, monkeypatch):
  monkeypatch.setattr(main_job, "COMMAND", [sys.executable, "-m", "facekp_jax.main",
                                            "--config=configs/tiny.py", "--config.num_epochs=0"])
  with pytest.raises(RuntimeError, match=r"failed \(2\): error: .*num_epochs"):
    main_job.run_once("warm", 0, str(tmp_path / "cache"), str(tmp_path))


def test_the_table_gives_each_arm_and_seed_its_median_and_range():
  records = [{"arm": "cold", "seed": 0, "wall_seconds": w, "val_rmse": 1.2614, "val_nme": 0.0292}
             for w in (230.0, 210.0, 250.0)]
  records.append({"arm": "warm", "seed": 0, "wall_seconds": 200.0, "val_rmse": 1.2614,
                  "val_nme": 0.0292})
  table = main_job.summary(records).splitlines()
  assert table[2] == "| cold | 0 | 3 | 230 (210-250) | 1.261 | 0.0292 |"
  assert table[3] == "| warm | 0 | 1 | 200 (200-200) | 1.261 | 0.0292 |"

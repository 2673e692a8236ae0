"""experiments/time_to_accuracy.py: watching scores as they are written, thresholds, the table,
a whole sitting that resumes."""

import json
import os

import pytest

from experiments import time_to_accuracy


def test_a_line_still_being_written_is_not_read(tmp_path):
  path = tmp_path / "metrics.jsonl"
  assert time_to_accuracy._records(str(path)) == []  # Not there yet.
  path.write_text('{"epoch": 1, "val_rmse": 3.0}\n{"epoch": 2, "val_r')
  assert time_to_accuracy._records(str(path)) == [{"epoch": 1, "val_rmse": 3.0}]
  path.write_text('{"epoch": 1, "val_rmse": 3.0}\n{"epoch": 2, "val_rmse": 2.4}\n')
  assert [r["epoch"] for r in time_to_accuracy._records(str(path))] == [1, 2]


def test_each_threshold_stops_at_the_first_score_at_or_under_it():
  curve = [[10.0, 1, 5.0], [20.0, 2, 3.44], [30.0, 3, 3.6], [40.0, 4, 2.0]]
  hits = time_to_accuracy.first_hits(curve, [3.44, 2.5, 1.0])
  assert hits == {"3.44": {"seconds": 20.0, "epoch": 2, "val_rmse": 3.44},
                  "2.5": {"seconds": 40.0, "epoch": 4, "val_rmse": 2.0}, "1": None}


def _record(system, rnd, seconds):
  curve = [[s, i + 1, r] for i, (s, r) in enumerate(seconds)]
  return {"system": system, "round": rnd,
          "thresholds": time_to_accuracy.first_hits(curve, [3.0, 2.0]), "curve": curve}


def test_the_table_pairs_the_ratio_to_a_peer_by_round():
  records = [_record("default", 1, [(10, 2.5), (20, 1.5)]),
             _record("keras", 1, [(100, 3.5), (200, 2.9)]),
             _record("default", 2, [(30, 2.9), (40, 2.8)]),
             _record("keras", 2, [(150, 2.95)])]
  table = time_to_accuracy.summary(records, [3.0, 2.0])
  rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
  assert rows["default"].startswith(
      "| default | 2 | 20 (10-30) | 1, 1 | 20 (20-20) (1/2 reached) |")
  assert "| never (0/2 reached) | — |" in rows["keras"]
  # Round 1: 200 / 10; round 2: 150 / 30; the median of the rounds' ratios.
  assert "- to 3 px: default is **12.5x** faster than keras (rounds: 20.0, 5.0)" in table
  assert "to 2 px: default is" not in table  # Keras never reached it: no ratio.


def test_a_sitting_on_small_built_in_faces_writes_its_table_and_resumes(tmp_path):
  out = tmp_path / "out"
  argv = ["--data=synthetic", "--systems=default", "--rounds=1", "--config=configs/tiny.py",
          "--set=data.synthetic_n=40", "--set=num_epochs=2", "--threshold=1000",
          "--threshold=0.001", f"--scratch={tmp_path / 'scratch'}", f"--out_dir={out}"]
  time_to_accuracy.main(argv)
  (record,) = [json.loads(line) for line in open(out / "runs.jsonl")]
  assert record["system"] == "default" and record["round"] == 1 and record["seed"] == 0
  # Any score passes 1000 px: the first epoch's; 0.001 px is never reached in two epochs.
  assert record["thresholds"]["1000"]["epoch"] == 1 and record["thresholds"]["0.001"] is None
  assert [p[1] for p in record["curve"]] == [1, 2]
  assert 0 < record["thresholds"]["1000"]["seconds"] <= record["wall_seconds"]
  assert os.path.getsize(out / "curves.png") > 0
  assert "| default | 1 |" in (out / "table.md").read_text()
  time_to_accuracy.main(argv)  # Resumes: the finished run is not run again.
  assert len(open(out / "runs.jsonl").readlines()) == 1


def test_a_missing_peer_python_is_one_line_saying_how_to_go_on(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    time_to_accuracy.main(["--systems=default,keras", f"--keras_python={tmp_path / 'none'}",
                           f"--out_dir={tmp_path}"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and "no Python for the keras peer" in err

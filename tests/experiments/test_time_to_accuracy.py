"""experiments/time_to_accuracy.py: reading a metrics.jsonl while it is written."""

from experiments import time_to_accuracy


def test_a_line_still_being_written_is_not_read(tmp_path):
  path = tmp_path / "metrics.jsonl"
  assert time_to_accuracy._records(str(path)) == []  # Not there yet.
  path.write_text('{"epoch": 1, "val_rmse": 3.0}\n{"epoch": 2, "val_r')
  assert time_to_accuracy._records(str(path)) == [{"epoch": 1, "val_rmse": 3.0}]
  path.write_text('{"epoch": 1, "val_rmse": 3.0}\n{"epoch": 2, "val_rmse": 2.4}\n')
  assert [r["epoch"] for r in time_to_accuracy._records(str(path))] == [1, 2]

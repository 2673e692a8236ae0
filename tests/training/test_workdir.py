"""Workdir files: atomic writes, the run writer, config checks, trained keypoints, disk failures."""

import errno
import logging
import os

import pytest

from facekp_jax.core import errors
from facekp_jax.training import workdir as workdir_lib


def test_run_writer_writes_files_atomically(tmp_path):
  writer = workdir_lib.RunWriter(str(tmp_path / "w"))
  record = {"step": 10, "train_loss": 4.0, "train_rmse": 2.0, "val_rmse": 3.0, "val_nme": 0.1}
  writer.append_metrics(dict(record, epoch=1))
  writer.append_metrics(dict(record, epoch=2))
  writer.write_results({"val_rmse": 1.5})
  assert (tmp_path / "w" / "metrics.jsonl").read_text().count("\n") == 2
  writer.rewrite_metrics([dict(record, epoch=1)])  # A resume drops epochs past its checkpoint.
  assert (tmp_path / "w" / "metrics.jsonl").read_text().count("\n") == 1
  writer.close()
  assert not [p for p in (tmp_path / "w").iterdir() if p.name.startswith(".tmp-")]
  off = workdir_lib.RunWriter(str(tmp_path / "off"), enabled=False)
  off.write_results({"x": 1})
  assert not (tmp_path / "off").exists()


def test_config_differences_ignore_fields_a_saved_run_predates():
  import ml_collections
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": (1, 2)}, "new_field": False})
  assert workdir_lib.config_differences({"a": 1, "b": {"c": [1, 2]}}, config) == []
  assert workdir_lib.config_differences({"a": 2, "b": {"c": [1, 2]}}, config) == ["a: 2 -> 1"]
  assert workdir_lib.config_differences({"a": 1, "b": {"c": [1, 2]}, "gone": 3}, config) == [
      "gone: 3 -> '<absent>'"]


def test_a_failing_metrics_write_leaves_no_half_line(tmp_path, monkeypatch):
  writer = workdir_lib.RunWriter(str(tmp_path))
  writer.append_metrics({"epoch": 1, "step": 4, "train_loss": 2.0})
  before = (tmp_path / "metrics.jsonl").read_bytes()
  real_fsync = os.fsync

  def full_disk(fd):  # The line reached the page cache; the disk refuses it.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError) as e:
    writer.append_metrics({"epoch": 2, "step": 8, "train_loss": 1.0})
  monkeypatch.setattr(os, "fsync", real_fsync)
  writer.close()
  assert (tmp_path / "metrics.jsonl").read_bytes() == before
  assert workdir_lib.disk_failure(e.value) is e.value


def test_disk_failures_become_one_line_and_other_errors_pass(tmp_path):
  full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "8"))
  try:
    try:
      raise full
    except OSError as inner:
      raise RuntimeError("async save failed") from inner  # As Orbax wraps its writers' errors.
  except RuntimeError as wrapped:
    assert workdir_lib.disk_failure(wrapped) is full
  tensorstore = ValueError(  # As TensorStore words a full disk (Orbax's array writes).
      'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/8.orbax-checkpoint-tmp/x": '
      "Failed to write 45232 bytes to file 4: No space left on device [os_error_code='28']")
  found = workdir_lib.disk_failure(tensorstore)
  assert (found.errno, found.filename) == (errno.ENOSPC, "/w/checkpoints/8.orbax-checkpoint-tmp/x")
  with pytest.raises(errors.WorkdirError) as e:
    with workdir_lib.disk_failures_end_the_run("W"):
      raise RuntimeError("async save failed") from full
  message = str(e.value)
  assert "\n" not in message and message.startswith("workdir W: a write ")
  assert "No space left on device" in message and "run the same command again" in message
  for other in (OSError(errno.ENOENT, "No such file"), ValueError("bad"),
                ValueError("NOT_FOUND: [os_error_code='2']")):
    with pytest.raises(type(other)):
      with workdir_lib.disk_failures_end_the_run("W"):
        raise other


def test_orbax_records_of_a_disk_failure_are_dropped_and_no_others():
  noise = workdir_lib._OrbaxDiskNoise()
  orbax = os.path.join("site-packages", "orbax", "checkpoint", "future.py")

  def record(path, error=None, message="save failed", level=logging.ERROR):
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("absl", level, path, 1, message, (), exc_info)

  full = OSError(errno.ENOSPC, "No space left on device")
  assert not noise.filter(record(orbax, full))
  assert not noise.filter(record(orbax, message="RESOURCE_EXHAUSTED: [os_error_code='28']"))
  assert noise.filter(record(orbax, ValueError("a bug")))  # Not the disk: kept.
  assert noise.filter(record(os.path.join("facekp_jax", "train.py"), full))  # Not Orbax's.
  assert noise.filter(record(orbax, full, level=logging.INFO))
  unretrieved = logging.LogRecord(
      "asyncio", logging.ERROR, os.path.join("asyncio", "base_events.py"), 1,
      "Task exception was never retrieved", (), (OSError, full, None))
  assert not noise.filter(unretrieved)  # Orbax's tasks' errors, logged by asyncio.

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


# Damaged workdirs and failing first writes (issue 25): each a one-line WorkdirError, nothing
# written. ``check_workdir`` runs before the data loads, the lock is the run's first write.

def _tiny_config():
  from configs import tiny
  return tiny.get_config()


@pytest.mark.parametrize("text, problem", [
    ("{not json", "cannot read config.json"),
    ("[1, 2]", "does not hold a config"),
    ('{"data": 5}', "does not hold a config"),
    (b"\xff\xfe\x00", "cannot read config.json"),
])
def test_a_damaged_config_json_is_one_line_before_anything_runs(tmp_path, text, problem):
  (tmp_path / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
  with pytest.raises(errors.WorkdirError, match=problem) as e:
    workdir_lib.check_workdir(str(tmp_path), _tiny_config())
  assert "\n" not in str(e.value) and "damaged" in str(e.value)


@pytest.mark.parametrize("name, make", [
    ("metrics.jsonl", "folder"), (".lock", "folder"), ("results.json", "folder"),
    ("checkpoints", "file"), ("config.json", "dangling"), ("tensorboard", "dangling"),
])
def test_a_run_file_of_the_wrong_kind_is_refused_naming_it(tmp_path, name, make):
  path = tmp_path / name
  if make == "folder":
    path.mkdir()
  elif make == "file":
    path.write_text("x")
  else:
    path.symlink_to(tmp_path / "gone")
  before = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises(errors.WorkdirError, match=f"{path} is a") as e:
    workdir_lib.check_workdir(str(tmp_path), _tiny_config())
  assert "move it away" in str(e.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_dangling_symlink_as_the_workdir_names_its_target(tmp_path):
  link = tmp_path / "w"
  link.symlink_to(tmp_path / "missing" / "run")
  with pytest.raises(errors.WorkdirError, match="symbolic link to .*missing/run, which does not"):
    workdir_lib.check_workdir(str(link), _tiny_config())
  assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("call", ["makedirs", "open", "pwrite"])
def test_a_failing_first_write_takes_back_the_lock_and_the_folder(tmp_path, monkeypatch, call):
  from facekp_jax.training import lock
  real = getattr(os, call)

  def full(*args, **kwargs):
    real(*args, **kwargs)  # The call itself happens (a folder, an empty file), then fails.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(lock.os, call, full)
  workdir = tmp_path / "new" / "w"
  with pytest.raises(errors.WorkdirError, match=r"cannot take its lock .*\.lock \(No space left"):
    lock.acquire(str(workdir))
  assert not workdir.exists()  # No empty .lock and no empty folder stay behind.
  existing = tmp_path / "old"
  existing.mkdir()
  with pytest.raises(errors.WorkdirError):
    lock.acquire(str(existing))
  assert existing.is_dir() and not list(existing.iterdir())


def test_trained_keypoints_of_another_shape_is_one_line(tmp_path):
  from facekp_jax.core import keypoints
  path = tmp_path / workdir_lib.TRAINED_KEYPOINTS
  for text in ("[1, 2]", '{"trained": 5}'):
    path.write_text(text)
    with pytest.raises(errors.WorkdirError, match="cannot read trained_keypoints.json"):
      workdir_lib.trained_keypoints(str(tmp_path), keypoints.KAGGLE)
    assert workdir_lib.mean_shape(str(tmp_path), keypoints.KAGGLE) is None


def test_atomic_write_names_the_callers_path_and_gives_opens_mode(tmp_path):
  from facekp_jax.core import files
  folder = tmp_path / "out.json"
  folder.mkdir()
  with pytest.raises(IsADirectoryError) as e:
    files.write_json(str(folder), {"a": 1})
  assert e.value.filename == str(folder)
  with pytest.raises(FileNotFoundError) as e:
    files.write_json(str(tmp_path / "no" / "x.json"), {})
  assert e.value.filename == str(tmp_path / "no" / "x.json")
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # No temporary file stays.
  files.write_json(str(tmp_path / "a.json"), {})
  umask = os.umask(0)
  os.umask(umask)
  assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask

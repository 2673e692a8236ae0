"""The command line: bad input ends in one line and exit code 2, with nothing written."""

import os
import subprocess
import sys

from tests.conftest import kaggle_frame, random_faces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "facekp_jax.main", "--config=configs/tiny.py", *args]
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_bad_csv_is_one_line_exit_2_and_writes_nothing(tmp_path):
  frame = kaggle_frame(*random_faces(3))
  frame.loc[1, "Image"] = "1 2 3"
  bad = tmp_path / "bad.csv"
  frame.to_csv(bad, index=False)
  workdir = tmp_path / "run"
  proc = _main(f"--config.data.train_csv={bad}", f"--workdir={workdir}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: {bad}: row 2: Image has 3 pixel values, expected 9216 (96x96)")
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_missing_file_is_an_error_not_a_fallback(tmp_path):
  proc = _main(f"--config.data.train_csv={tmp_path / 'nope.csv'}", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2 and "nope.csv: file not found" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_unknown_config_field_is_refused(tmp_path):
  proc = _main("--config.num_epoch=3", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode != 0 and "num_epoch" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_bad_config_value_is_one_line_exit_2(tmp_path):
  proc = _main("--config.data.rows=some", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "data.rows must be 'complete' or 'all'" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "w").exists()


def test_batch_larger_than_the_training_set_is_refused(tmp_path):
  proc = _main("--config.batch_size=64", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "batch_size 64 exceeds the 51 training faces" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "w").exists()


def test_os_errors_are_one_line_naming_the_file_or_saying_the_message(capsys):
  import errno

  import pytest

  from facekp_jax import cli
  cases = [(FileNotFoundError("Checkpoint at /w/checkpoints/10 not found."),
            "error: Checkpoint at /w/checkpoints/10 not found."),
           (OSError(errno.EISDIR, "Is a directory", "/w/out.csv"),
            "error: /w/out.csv: Is a directory")]
  for error, line in cases:
    with pytest.raises(SystemExit) as e, cli.user_errors():
      raise error
    assert e.value.code == 2 and capsys.readouterr().err == line + "\n"

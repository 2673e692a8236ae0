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


def test_a_config_file_loads_from_any_folder_and_its_problems_are_one_line(tmp_path):
  """A copy of a shipped config runs from another folder; a mistyped path, a folder and a
  config whose own code fails are one line each, exit code 2."""
  import shutil
  shutil.copy(os.path.join(ROOT, "configs", "tiny.py"), tmp_path / "mine.py")
  # The batch check comes after the config, the data and the model's config checks.
  proc = subprocess.run([sys.executable, "-m", "facekp_jax.main", f"--config={tmp_path}/mine.py",
                         "--config.batch_size=64", f"--workdir={tmp_path / 'w'}"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=300,
                        env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2 and "batch_size 64 exceeds" in proc.stderr, proc.stderr[-2000:]
  (tmp_path / "broken.py").write_text("import nowhere_at_all\n\ndef get_config():\n  pass\n")
  cases = {
      "configs/resnett.py": "error: config file configs/resnett.py not found (the repository's: "
                            "configs/resnet.py, configs/seed_keras.py, configs/tiny.py)",
      str(tmp_path): f"error: config file {tmp_path} is a folder; give a .py file with "
                     "get_config()",
      str(tmp_path / "broken.py"): f"error: config file {tmp_path / 'broken.py'} does not load: "
                                   "ModuleNotFoundError: No module named 'nowhere_at_all'",
  }
  for path, line in cases.items():
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "facekp_jax.main", f"--config={path}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert (proc.returncode, proc.stderr) == (2, line + "\n"), proc.stderr[-2000:]


def test_xla_flags_xla_refuses_are_one_line_exit_2(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_nonsense=1")
  for command in (["facekp_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}"],
                  ["facekp_jax.evaluate", f"--workdir={tmp_path}", f"--csv={tmp_path}"]):
    proc = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert (proc.returncode, proc.stderr) == (
        2, "error: XLA_FLAGS='--xla_nonsense=1': Unknown flag in XLA_FLAGS: --xla_nonsense=1; "
        "mend or unset XLA_FLAGS\n"), proc.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_an_interrupted_run_without_workdir_says_the_exact_command_that_resumes(tmp_path):
  """The README's command has no --workdir: the log names the folder it chose, and Ctrl-C's
  line gives the command that resumes that folder (a plain rerun would start a new one)."""
  import shlex
  import signal
  import time
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  config = os.path.join(ROOT, "configs", "tiny.py")
  proc = subprocess.Popen([sys.executable, "-m", "facekp_jax.main", f"--config={config}",
                           "--config.num_epochs=50"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
  deadline = time.time() + 240
  while not glob_checkpoints(tmp_path) and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
  [workdir] = os.listdir(tmp_path / "runs")
  assert f"workdir runs/{workdir} (resume with: " in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("stopped by SIGINT at step ") and "checkpoint saved, resume with: " in last
  command = shlex.split(last.split("resume with: ", 1)[1])
  assert command == ["python", "-m", "facekp_jax.main", f"--config={config}",
                     "--config.num_epochs=50", f"--workdir=runs/{workdir}"]
  again = subprocess.run([sys.executable, *command[1:], "--config.num_epochs=2",
                          "--allow_config_change"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
  assert again.returncode == 0 and "resumed from the checkpoint" in again.stderr, again.stderr
  assert os.listdir(tmp_path / "runs") == [workdir]


def glob_checkpoints(folder):
  import glob
  return glob.glob(str(folder / "runs" / "*" / "checkpoints" / "[0-9]*"))


def test_the_compilation_cache_folder_is_the_users_unless_jax_is_told(monkeypatch, tmp_path):
  from facekp_jax import cli
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cli.compilation_cache_dir() == str(tmp_path / "xdg" / "facekp_jax" / "jax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cli.compilation_cache_dir() == str(tmp_path / "home" / ".cache" / "facekp_jax" / "jax")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  assert cli.compilation_cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # Off.
  assert cli.compilation_cache_dir() is None and cli.compilation_cache() is None


def test_a_cache_folder_that_cannot_be_made_leaves_the_cache_off(monkeypatch, tmp_path):
  import jax

  from facekp_jax import cli
  (tmp_path / "file").write_text("")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # A file where a folder must be.
  updates = []
  monkeypatch.setattr(jax.config, "update", lambda *a: updates.append(a))
  assert cli.compilation_cache() is None and updates == []
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cli.compilation_cache() == str(tmp_path / "xdg" / "facekp_jax" / "jax")
  assert updates == [("jax_compilation_cache_dir", str(tmp_path / "xdg" / "facekp_jax" / "jax"))]


def test_a_training_keeps_its_compiled_programs_for_the_next_run(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # Tiny programs compile fast.
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = [sys.executable, "-m", "facekp_jax.main", "--config=configs/tiny.py",
         "--config.num_epochs=1", f"--workdir={tmp_path / 'run'}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  entries = os.listdir(tmp_path / "facekp_jax" / "jax")
  assert sum(e.endswith("-cache") for e in entries) >= 2, entries  # Training and evaluation.

"""Checkpoints and resume: kills, signals, the NaN guard, config mismatches."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from facekp_jax.core import sharding
from facekp_jax.training import checkpoint, steps
from facekp_jax.training import config as config_lib
from tests.conftest import kaggle_frame, random_faces

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 4  # Of 4 steps (32 training faces, batch 8), a checkpoint after each.


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "faces.csv"
  kaggle_frame(*random_faces(40, seed=5)).to_csv(path, index=False)
  return str(path)


def _args(csv, workdir, *extra):
  return [sys.executable, "-m", "facekp_jax.main", "--config=configs/tiny.py",
          f"--workdir={workdir}", f"--config.data.train_csv={csv}",
          f"--config.num_epochs={EPOCHS}", "--config.checkpoint_every_steps=1",
          # The EMA (in the state) and the warp (drawn per step) must resume exactly as well.
          "--config.ema_decay=0.9", "--config.augment.geometry_prob=0.5", *extra]


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


def _run(csv, workdir, *extra):
  return subprocess.run(_args(csv, workdir, *extra), capture_output=True, text=True,
                        env=_env(), cwd=ROOT, timeout=300)


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []


def _start_until(csv, workdir, after_step):
  """Starts a run and returns it once a checkpoint at ``after_step`` or later exists."""
  proc = subprocess.Popen(_args(csv, workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=_env(), cwd=ROOT)
  deadline = time.time() + 240
  while max(_steps(workdir), default=0) < after_step and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.01)
  return proc


def _start_and_signal(csv, workdir, after_step, signum, delay=0.0):
  """Starts a run and sends ``signum`` once a checkpoint past ``after_step`` exists."""
  proc = _start_until(csv, workdir, after_step)
  time.sleep(delay)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, err


def _final_params(workdir):
  mesh = sharding.make_mesh()
  trainer = steps.Trainer(config_lib.read_config(str(workdir)), mesh)
  ckpt = checkpoint.Checkpointer(workdir)
  state, progress = ckpt.restore(trainer.init_state())
  ckpt.close()
  return int(state.step), jax.device_get(state), progress


@pytest.fixture(scope="module")
def uninterrupted(csv, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("runs") / "straight"
  proc = _run(csv, workdir)
  assert proc.returncode == 0, proc.stderr
  return workdir


def _assert_same_run(a, b):
  step_a, state_a, _ = _final_params(a)
  step_b, state_b, _ = _final_params(b)
  assert step_a == step_b == EPOCHS * 4
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x), np.asarray(jax.random.key_data(y) if
        jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key) else y))
  lines_a = [json.loads(l) for l in open(os.path.join(a, "metrics.jsonl"))]
  lines_b = [json.loads(l) for l in open(os.path.join(b, "metrics.jsonl"))]
  assert [r["epoch"] for r in lines_b] == list(range(1, EPOCHS + 1))
  for ra, rb in zip(lines_a, lines_b):
    assert (ra["train_loss"], ra["val_rmse"]) == (rb["train_loss"], rb["val_rmse"])


def test_sigkill_twice_then_resume_is_bit_identical(csv, uninterrupted, tmp_path):
  workdir = tmp_path / "killed"  # (test_many_random_sigkills_still_bit_identical: -m slow)
  for after_step, delay in ((3, 0.0), (9, 0.11)):
    rc, _ = _start_and_signal(csv, workdir, after_step, signal.SIGKILL, delay)
    assert rc == -signal.SIGKILL
  assert max(_steps(workdir)) < EPOCHS * 4  # Killed before the end each time.
  assert (workdir / ".lock").exists()  # The dead holder's lock file stays; the OS lock did not.
  proc = _run(csv, workdir)
  assert proc.returncode == 0, proc.stderr
  assert "resumed from the checkpoint" in proc.stderr
  _assert_same_run(uninterrupted, workdir)


def test_a_second_training_on_a_busy_workdir_is_refused_at_once(csv, uninterrupted, tmp_path):
  workdir = tmp_path / "busy"
  first = _start_until(csv, workdir, 2)
  first.send_signal(signal.SIGSTOP)  # Holds the lock, frozen mid-run, while the second tries.
  try:
    before = sorted(p.name for p in workdir.rglob("*"))
    second = _run(csv, workdir)
    after = sorted(p.name for p in workdir.rglob("*"))
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 2
  lines = second.stderr.strip().splitlines()
  assert "in use by another training" in lines[-1] and f"pid {first.pid}" in lines[-1]
  assert after == before  # The refused run wrote nothing.
  _, err = first.communicate(timeout=240)
  assert first.returncode == 0, err
  _assert_same_run(uninterrupted, workdir)  # The first is unaffected: same state, every epoch.


def test_sigterm_saves_exits_cleanly_and_resumes(csv, uninterrupted, tmp_path):
  workdir = tmp_path / "term"
  rc, err = _start_and_signal(csv, workdir, 6, signal.SIGTERM)
  assert rc == 128 + signal.SIGTERM
  assert "stopped by SIGTERM at step" in err and "Traceback" not in err
  stopped_at = int(err.split("at step ")[1].split(";")[0])
  assert stopped_at in _steps(workdir)
  proc = _run(csv, workdir)
  assert proc.returncode == 0, proc.stderr
  _assert_same_run(uninterrupted, workdir)


def test_finished_run_is_not_retrained(csv, uninterrupted):
  before = sorted(_steps(uninterrupted))
  proc = _run(csv, uninterrupted)
  assert proc.returncode == 0 and sorted(_steps(uninterrupted)) == before
  assert len(open(os.path.join(uninterrupted, "metrics.jsonl")).readlines()) == EPOCHS


def test_changed_config_is_refused_with_the_differing_fields(csv, uninterrupted):
  proc = _run(csv, uninterrupted, "--config.learning_rate=0.5", "--config.batch_size=4")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert "another config" in last and "learning_rate: 0.001 -> 0.5" in last
  assert "batch_size: 8 -> 4" in last


def test_nan_guard_stops_with_the_step_and_keeps_the_good_checkpoint(csv, tmp_path):
  workdir = tmp_path / "nan"
  proc = _run(csv, workdir, "--config.num_epochs=1")
  assert proc.returncode == 0, proc.stderr
  good = sorted(_steps(workdir))
  step, state, _ = _final_params(workdir)
  # Saves only at epoch ends now: the blow-up in epoch 2 is caught before any save.
  proc = _run(csv, workdir, "--config.num_epochs=3", "--config.learning_rate=1e30",
              "--config.checkpoint_every_steps=0", "--allow_config_change")
  assert proc.returncode == 3
  last = proc.stderr.strip().splitlines()[-1]
  assert "non-finite training loss at step" in last and "Traceback" not in proc.stderr
  assert int(last.split("at step ")[1].split(";")[0]) > step
  assert sorted(_steps(workdir)) == good
  _, after, _ = _final_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, state.params, after.params)


def test_unusable_workdir_is_refused_before_anything_is_written(csv, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  proc = _run(csv, blocker / "run")
  assert proc.returncode == 2 and "is not a folder" in proc.stderr.strip().splitlines()[-1]
  damaged = tmp_path / "damaged"  # A workdir whose config.json is not JSON: one line, as is.
  damaged.mkdir()
  (damaged / "config.json").write_text("{torn")
  proc = _run(csv, damaged)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert "cannot read config.json" in proc.stderr.strip().splitlines()[-1]
  assert sorted(p.name for p in damaged.iterdir()) == ["config.json"]
  assert (damaged / "config.json").read_text() == "{torn"
  if os.geteuid() != 0:  # Root may write anywhere.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = _run(csv, locked / "run")
    assert proc.returncode == 2 and "is not writable" in proc.stderr


def test_tensorboard_events_are_written(uninterrupted):
  tb = os.path.join(uninterrupted, "tensorboard")
  files = [f for f in os.listdir(tb) if "tfevents" in f]
  assert files and b"val_rmse" in open(os.path.join(tb, files[0]), "rb").read()


@pytest.mark.slow
def test_many_random_sigkills_still_bit_identical(csv, uninterrupted, tmp_path):
  """Slow: ``pytest -m slow``. Eight kills at random moments, including during saves."""
  rng = np.random.default_rng(0)
  workdir = tmp_path / "many"
  points = sorted(rng.choice(np.arange(1, EPOCHS * 4 - 1), size=8, replace=False))
  for after_step in points:
    _start_and_signal(csv, workdir, int(after_step), signal.SIGKILL, float(rng.uniform(0, 0.3)))
  proc = _run(csv, workdir)
  assert proc.returncode == 0, proc.stderr
  _assert_same_run(uninterrupted, workdir)


def _fill(folder):
  """Fills ``folder``'s file system for good; returns the filler and the files held open.

  Every file already there is held open, so that the run's own clean-up (Orbax deleting a
  checkpoint it no longer keeps) frees no space: a deleted file's pages stay allocated while
  a descriptor is open. Without that, a save that completes just as the disk fills frees the
  next one's room, and the run can go on to its end (a timing-dependent pass under load).
  """
  held = [open(os.path.join(d, n), "rb") for d, _, names in os.walk(folder) for n in names]
  path = os.path.join(folder, "filler")
  fd = os.open(path, os.O_WRONLY | os.O_CREAT)
  for size in (1 << 20, 1 << 12):  # Megabytes, then the last pages.
    try:
      while True:
        os.write(fd, b"\0" * size)
    except OSError:
      pass
  os.close(fd)
  return path, held


def test_a_full_disk_ends_the_run_in_one_line_and_the_same_command_resumes(csv, uninterrupted,
                                                                          tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = os.geteuid() == 0 and subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
      capture_output=True).returncode == 0
  if not mounted:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    workdir = disk / "w"
    proc = _start_until(csv, workdir, 6)
    filler, held = _fill(disk)  # The disk is full from here on: the next write fails.
    try:
      _, err = proc.communicate(timeout=240)
    finally:
      for f in held:
        f.close()
    assert proc.returncode == 2, err
    [line] = [l for l in err.splitlines() if l.startswith("error: ")]
    assert line.startswith(f"error: workdir {workdir}: a write") and "No space left" in line
    assert "run the same command again" in line
    # Orbax's threads' own records of the failure stay out, and nothing follows the line (the
    # process ends there, without the shutdown in which half-done writes print tracebacks).
    others = [l for l in err.replace(line, "").splitlines() if "No space left" in l]
    assert not others, "\n".join(l[:300] for l in others)  # Each such line, not 1,000 others.
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err, err[-3000:]
    for line in open(workdir / "metrics.jsonl"):
      json.loads(line)  # Whole lines only.
    os.remove(filler)  # Space freed: the same command resumes, bit-identical.
    again = _run(csv, workdir)
    assert again.returncode == 0, again.stderr
    assert "resumed from the checkpoint" in again.stderr
    _assert_same_run(uninterrupted, workdir)
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _damage(workdir, step):
  """Cuts the largest array file of checkpoint ``step`` to 100 bytes (a torn write)."""
  data = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(workdir, "checkpoints",
                                                                  str(step), "state")) for f in fs]
  victim = max(data, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(100)


def _target(workdir):
  trainer = steps.Trainer(config_lib.read_config(str(workdir)), sharding.make_mesh())
  return trainer.init_state


def test_a_damaged_latest_checkpoint_is_passed_over_by_readers_and_resume(csv, uninterrupted,
                                                                          tmp_path, capsys):
  import shutil

  from facekp_jax.core.errors import WorkdirError
  workdir = tmp_path / "w"
  shutil.copytree(uninterrupted, workdir)
  on_disk = sorted(_steps(workdir))
  _damage(workdir, on_disk[-1])
  _, step = checkpoint.restore_trained(str(workdir), _target(workdir), "latest")
  assert step == on_disk[-2]
  assert capsys.readouterr().err.strip() == (
      f"note: workdir {workdir}: the checkpoint at step {on_disk[-1]} is damaged; read step "
      f"{on_disk[-2]} instead")
  # The same command resumes from the intact one, sets the damaged one aside, and ends where
  # the uninterrupted run did, bit for bit.
  proc = _run(csv, workdir)
  assert proc.returncode == 0, proc.stderr
  assert f"the checkpoint at step {on_disk[-1]} is damaged" in proc.stderr
  assert os.listdir(workdir / "damaged_checkpoints") == [str(on_disk[-1])]
  _assert_same_run(uninterrupted, workdir)
  for s in _steps(workdir):  # Every checkpoint damaged: one line, for readers and resume alike.
    _damage(workdir, s)
  with pytest.raises(WorkdirError, match="every checkpoint is damaged"):
    checkpoint.restore_trained(str(workdir), _target(workdir))
  proc = _run(csv, workdir, f"--config.num_epochs={EPOCHS + 1}", "--allow_config_change")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "every checkpoint is damaged" in proc.stderr.strip().splitlines()[-1]


def test_readers_beside_a_training_always_read_a_whole_checkpoint(csv, tmp_path):
  """Loads hammer a training that saves every step and keeps one: each load reads a whole
  checkpoint or finds none yet, never a half-deleted one."""
  from facekp_jax.core.errors import WorkdirError
  workdir = tmp_path / "w"
  proc = subprocess.Popen(_args(csv, workdir, "--config.keep_checkpoints=1",
                                "--config.num_epochs=12"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                          cwd=ROOT)
  read, none_yet = [], 0
  deadline = time.time() + 280
  try:
    while not (workdir / "config.json").exists() and proc.poll() is None:
      time.sleep(0.05)
    target = _target(workdir)
    while proc.poll() is None and time.time() < deadline:
      for which in checkpoint.CHECKPOINTS:
        try:
          _, step = checkpoint.restore_trained(str(workdir), target, which)
          read.append(step)
        except WorkdirError as e:
          assert "no checkpoint to restore" in str(e), e
          none_yet += 1
  finally:
    proc.kill() if proc.poll() is None else None
    _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert len(read) >= 10 and len(set(read)) >= 3, (read, none_yet)


@pytest.mark.parametrize("race", [FileNotFoundError, NotADirectoryError])
def test_a_step_deleted_while_orbax_lists_it_sends_the_reader_to_list_again(uninterrupted,
                                                                            monkeypatch, race):
  """The race the test above draws at random, drawn every time: Orbax finds a listed step
  gone before it reads its metadata, as FileNotFoundError or, where the step vanished between
  its "exists" and its "is a directory", as NotADirectoryError."""
  listed, real = [], checkpoint.Checkpointer.steps

  def racing(self):
    listed.append(1)
    if len(listed) == 1:
      raise race(f"Path is not a directory: {uninterrupted}/checkpoints/3")
    return real(self)

  monkeypatch.setattr(checkpoint.Checkpointer, "steps", racing)
  _, step = checkpoint.restore_trained(str(uninterrupted), _target(uninterrupted), "latest")
  assert step == EPOCHS * 4 and len(listed) == 2


def test_what_orbax_tasks_log_of_a_handled_read_failure_is_dropped_and_nothing_else():
  import logging
  noise = checkpoint._ReadNoise()
  torn = ValueError('OUT_OF_RANGE: Error reading "params.x/0" in OCDBT database')
  gone = ValueError('NOT_FOUND: Error opening "zarr" driver: Metadata at "x/.zarray" does not '
                    "exist")

  def record(name, error, level=logging.ERROR):
    path = os.path.join("asyncio", "base_events.py")
    return logging.LogRecord(name, level, path, 1, "Task exception was never retrieved", (),
                             (type(error), error, None))

  assert not noise.filter(record("asyncio", torn))
  assert not noise.filter(record("asyncio", gone))
  assert noise.filter(record("asyncio", ValueError("a bug")))  # Not a read failure: kept.
  assert noise.filter(record("facekp_jax", torn))  # Not asyncio's or Orbax's: kept.
  assert noise.filter(record("asyncio", torn, level=logging.INFO))


def test_a_manager_whose_cleanup_races_a_finishing_writer_is_made_again(tmp_path, monkeypatch):
  """A save that failed in this process leaves its writer threads finishing for a moment, and
  Orbax's cleanup of that half-written step then meets files still appearing (ENOTEMPTY)."""
  import errno

  import orbax.checkpoint as ocp
  made, real = [], ocp.CheckpointManager

  def racing(*args, **kwargs):
    made.append(1)
    if len(made) == 1:
      raise OSError(errno.ENOTEMPTY, "Directory not empty", "state.orbax-checkpoint-tmp")
    return real(*args, **kwargs)

  monkeypatch.setattr(checkpoint.time, "sleep", lambda s: None)
  monkeypatch.setattr(ocp, "CheckpointManager", racing)
  checkpoint.Checkpointer(str(tmp_path / "w")).close()
  assert len(made) == 2

  def always_racing(*args, **kwargs):
    made.append(1)
    raise OSError(errno.ENOTEMPTY, "Directory not empty", "state.orbax-checkpoint-tmp")

  made.clear()  # A race that does not end is the one-line OSError it was, after a few tries.
  monkeypatch.setattr(ocp, "CheckpointManager", always_racing)
  with pytest.raises(OSError, match="Directory not empty"):
    checkpoint.Checkpointer(str(tmp_path / "v"))
  assert len(made) == checkpoint._CLEANUP_TRIES

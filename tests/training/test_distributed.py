"""Two processes (CPU, gloo collectives over 127.0.0.1) train exactly like one.

Every run is the real command line, ``python -m facekp_jax.main --distributed=manual ...``.
The reference is one process with two (fake) CPU devices: the same global batches split over
the same two devices, so the final states must agree (to 1e-5; they are in fact identical). A
single device would sum each batch in another order, and Adam's first, sign-like step turns
that rounding into ~1e-3 differences of the tiny config's parameters.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from facekp_jax.core import sharding
from facekp_jax.training import checkpoint, steps
from facekp_jax.training import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS, STEPS_PER_EPOCH = 2, 4  # 40 synthetic faces: 32 train, batch 8.
FLAGS = ("--config=configs/tiny.py", f"--config.num_epochs={EPOCHS}",
         "--config.data.synthetic_n=40", "--config.checkpoint_every_steps=2")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, processes, flags=FLAGS):
  """Starts one run: ``processes`` processes of one device each, or one process of two.

  Every start shares the test session's compilation cache (conftest's, in the environment):
  a second start of a run, and the other tests' pairs, reuse the compiled steps.
  """
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  if processes == 1:
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    commands = [[]]
  else:
    port = _free_port()
    commands = [["--distributed=manual", f"--coordinator_address=127.0.0.1:{port}",
                 f"--num_processes={processes}", f"--process_id={i}"] for i in range(processes)]
  procs = []
  for i, extra in enumerate(commands):
    log = open(f"{workdir}.{i}.{time.time_ns()}.log", "w+")  # pylint: disable=consider-using-with
    procs.append((subprocess.Popen(
        [sys.executable, "-m", "facekp_jax.main", *flags, f"--workdir={workdir}", *extra],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log))
  return procs


def _finish(procs, timeout=240) -> str:
  """Waits for every process (killing all if one fails); returns process 0's output."""
  try:
    deadline = time.time() + timeout
    for proc, _ in procs:
      proc.wait(timeout=max(1.0, deadline - time.time()))
  finally:
    _kill(procs)
  outputs = _outputs(procs)
  codes = [proc.returncode for proc, _ in procs]
  assert codes == [0] * len(procs), "\n".join(
      f"process {i} (exit {c}):\n{out[-2000:]}" for i, (c, out) in enumerate(zip(codes, outputs)))
  return outputs[0]


def _outputs(procs) -> list[str]:
  """Each process's whole log (the logs are closed after)."""
  outputs = []
  for _, log in procs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  return outputs


def _kill(procs):
  for proc, _ in procs:
    if proc.poll() is None:
      proc.kill()
  for proc, _ in procs:
    proc.wait()


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []


def _final(workdir):
  """(state, results, metrics history) of a finished run, restored in this one process."""
  trainer = steps.Trainer(config_lib.read_config(str(workdir)), sharding.make_mesh())
  restored, _ = checkpoint.restore_trained(str(workdir), trainer.init_state, "latest")
  state = jax.device_get({"step": restored.step, "params": restored.params,
                          "batch_stats": restored.batch_stats, "opt": restored.opt_state})
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f]
  return state, results, history


def _assert_same_run(a, b):
  (state_a, results_a, history_a), (state_b, results_b, history_b) = a, b
  assert int(state_a["step"]) == int(state_b["step"]) == EPOCHS * STEPS_PER_EPOCH
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
               state_a, state_b)
  assert results_a["val_rmse"] == pytest.approx(results_b["val_rmse"], rel=1e-5)
  # Only process 0 appends to metrics.jsonl: one line per epoch, no duplicates.
  epochs = list(range(1, EPOCHS + 1))
  assert [h["epoch"] for h in history_a] == [h["epoch"] for h in history_b] == epochs
  for h_a, h_b in zip(history_a, history_b):
    assert h_a["val_rmse"] == pytest.approx(h_b["val_rmse"], rel=1e-5)
    assert h_a["train_loss"] == pytest.approx(h_b["train_loss"], rel=1e-5)


def test_two_processes_killed_and_resumed_end_like_one_uninterrupted_process(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  reference, pair = _start(one, 1), _start(two, 2)
  try:
    deadline = time.time() + 240
    while not _steps(two) and all(p.poll() is None for p, _ in pair):
      assert time.time() < deadline, "no checkpoint within 240 s"
      time.sleep(0.01)
    if any(p.poll() is not None for p, _ in pair):
      _finish(pair)  # Fails with the processes' output.
      pytest.fail("the run ended before it could be killed")
    _kill(pair)  # SIGKILL, at the first checkpoint: the run has to come back from there.
    log = _finish(_start(two, 2))  # The same command again.
    _finish(reference)
  finally:
    _kill(reference + pair)
  assert "resumed from the checkpoint at step" in log
  _assert_same_run(_final(two), _final(one))
  assert json.loads((two / "results.json").read_text())["devices"] == 2
  assert sorted(os.listdir(two)) == sorted(os.listdir(one))
  assert not [n for n in os.listdir(two / "checkpoints") if n.startswith(".")]


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
  run = tmp_path / "run"
  flags = (*FLAGS[:1], "--config.num_epochs=100", *FLAGS[2:])  # Far longer than the test waits.
  pair = _start(run, 2, flags=flags)
  try:
    deadline = time.time() + 240
    while not _steps(run) and all(p.poll() is None for p, _ in pair):
      assert time.time() < deadline, "no checkpoint within 240 s"
      time.sleep(0.01)
    assert all(p.poll() is None for p, _ in pair), "the run ended before it could be signalled"
    pair[1][0].send_signal(signal.SIGTERM)  # Process 1 only.
    codes = [p.wait(timeout=120) for p, _ in pair]
  finally:
    _kill(pair)
  logs = _outputs(pair)
  assert codes == [128 + signal.SIGTERM] * 2, logs
  stopped = [re.findall(r"stopped by SIGTERM at step (\d+); checkpoint saved", t) for t in logs]
  assert stopped[0] and stopped[0] == stopped[1], logs
  assert int(stopped[0][0]) in _steps(run) and int(stopped[0][0]) < 100 * STEPS_PER_EPOCH


def test_bad_distributed_flags_are_one_line_exit_2(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "facekp_jax.main", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'w'}", "--distributed=manual", "--num_processes=2"],
      capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --distributed=manual needs --coordinator_address, --process_id")
  assert not (tmp_path / "w").exists()

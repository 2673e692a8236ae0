"""Randomly damaged CSVs: each either reads or ends in a one-line DataError, never a crash."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from facekp_jax.core import errors
from facekp_jax.data import dataset as dataset_lib
from facekp_jax.data import kaggle
from tests.conftest import kaggle_frame, random_faces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _damage(text: str, rng: np.random.Generator) -> bytes:
  kind = rng.integers(8)
  raw = text.encode()
  if kind == 0:  # Truncated anywhere.
    return raw[: rng.integers(0, len(raw))]
  if kind == 1:  # Random bytes overwritten.
    b = bytearray(raw)
    for i in rng.integers(0, len(b), 20):
      b[i] = int(rng.integers(0, 256))
    return bytes(b)
  lines = text.split("\n")
  if kind == 2:  # A header name damaged.
    names = lines[0].split(",")
    names[rng.integers(len(names))] += "_x"
    lines[0] = ",".join(names)
  elif kind == 3:  # A row with fields removed.
    i = rng.integers(1, len(lines) - 1)
    lines[i] = ",".join(lines[i].split(",")[: rng.integers(1, 31)])
  elif kind == 4:  # Non-numeric tokens in a row.
    i = rng.integers(1, len(lines) - 1)
    lines[i] = lines[i].replace("1", "l", int(rng.integers(1, 5)))
  elif kind == 5:  # Pixels dropped from an image.
    i = rng.integers(1, len(lines) - 1)
    lines[i] = lines[i].rsplit(" ", int(rng.integers(1, 50)))[0]
  elif kind == 6:  # Extra separators.
    i = rng.integers(1, len(lines) - 1)
    lines[i] = lines[i].replace(",", ",,", 1)
  else:  # Every label of a row erased.
    i = rng.integers(1, len(lines) - 1)
    lines[i] = "," * 30 + lines[i].split(",")[-1]
  return "\n".join(lines).encode()


@pytest.mark.parametrize("seed", range(40))
def test_damaged_csv_reads_or_fails_in_one_line(tmp_path, seed):
  rng = np.random.default_rng(seed)
  text = kaggle_frame(*random_faces(4, seed=seed)).to_csv(index=False)
  raw = _damage(text, rng)
  name = "bad.csv.gz" if seed % 4 == 0 else "bad.csv"
  path = tmp_path / name
  path.write_bytes(gzip.compress(raw) if name.endswith(".gz") and seed % 8 else raw)
  try:
    faces = dataset_lib.select_rows(kaggle.read_training_csv(str(path)), "all", str(path))
  except errors.DataError as e:
    msg = str(e)
    assert msg.startswith(str(path) + ": ") and "\n" not in msg and len(msg) < 400
  else:
    assert faces.images.shape[1:] == (96, 96, 1) and np.isfinite(faces.targets).all()
    assert 0 <= faces.images.min() and faces.images.max() <= 1


def test_damaged_csv_on_the_command_line_never_shows_a_traceback(tmp_path):
  text = kaggle_frame(*random_faces(4)).to_csv(index=False)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  for seed in (1, 2, 3):
    path = tmp_path / f"bad{seed}.csv"
    path.write_bytes(_damage(text, np.random.default_rng(seed)))
    proc = subprocess.run(
        [sys.executable, "-m", "facekp_jax.main", "--config=configs/tiny.py",
         f"--workdir={tmp_path / f'w{seed}'}", f"--config.data.train_csv={path}",
         "--config.num_epochs=1", "--config.batch_size=2", "--config.data.rows=all"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
      assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {path}: ")
      assert not (tmp_path / f"w{seed}").exists()

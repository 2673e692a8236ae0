"""Shared helpers: Kaggle-layout files written directly with pandas (no synthetic faces); one
compilation cache for the whole test session."""

import importlib.util
import os
import shutil
import tempfile

# One persistent compilation cache for the session's processes (the xdist workers and the commands
# the tests start, which inherit the environment), set before JAX is imported: the same tiny models
# compile once, not in every test. Its size limit turns on JAX's file lock around each entry, so
# that processes reading and writing it at once never see half an entry.
_OWNS_CACHE = "FACEKP_JAX_TEST_CACHE" not in os.environ  # xdist workers inherit the controller's.
if _OWNS_CACHE:
  os.environ["FACEKP_JAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="facekp_jax_tests_")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["FACEKP_JAX_TEST_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import numpy as np  # noqa: E402 (after the cache is set)
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from facekp_jax.core import host_memory, keypoints  # noqa: E402

# The [export] extra (jax2onnx) is not in [test]: .ci/run tests ONNX export apart.
HAS_ONNX = importlib.util.find_spec("jax2onnx") is not None

# The test session is a run: tune malloc before JAX starts its CPU client, as the commands do.
host_memory.reuse_freed_memory()


def random_faces(n, seed=0, missing_every=0):
  """Random uint8 images and in-frame coordinates; every k-th row misses all but 4 points."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 96, 96), dtype=np.uint8)
  coords = rng.uniform(10, 85, (n, 30)).astype(np.float32)
  if missing_every:
    keep = [keypoints.KAGGLE.columns.index(c) for c in (
        "left_eye_center_x", "left_eye_center_y", "right_eye_center_x", "right_eye_center_y",
        "nose_tip_x", "nose_tip_y", "mouth_center_bottom_lip_x", "mouth_center_bottom_lip_y")]
    drop = np.setdiff1d(np.arange(30), keep)
    coords[::missing_every, drop] = np.nan
  return images, coords


def init_jitted(model, x, **kwargs):
  """``model.init(key 0, x, **kwargs)``, jitted: one program from the session's cache instead
  of every op compiled on its own (~10x slower on CPU)."""
  import jax

  return jax.jit(lambda key: model.init(key, x, **kwargs))(jax.random.key(0))


def tiny_config(csv=None, **overrides):
  """configs/tiny.py on ``csv`` (None: the built-in faces), with dotted-field ``overrides``."""
  from configs import tiny

  config = tiny.get_config()
  if csv:
    config.data.train_csv = csv
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def kaggle_frame(images, coords):
  frame = pd.DataFrame(coords, columns=list(keypoints.KAGGLE.columns))
  frame[keypoints.IMAGE_COLUMN] = [" ".join(map(str, im.reshape(-1))) for im in images]
  return frame


@pytest.fixture
def write_csv(tmp_path):
  """write_csv(name, images, coords) -> path of a Kaggle training.csv-layout file."""

  def write(name, images, coords):
    path = tmp_path / name
    kaggle_frame(images, coords).to_csv(path, index=False)
    return str(path)

  return write


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A workdir of configs/tiny.py trained one epoch on 24 built-in faces (a few seconds), shared
  by the tests that only need some trained model: predict, faces, export."""
  from configs import tiny
  from facekp_jax.training import loop

  config = tiny.get_config()
  config.num_epochs = 1
  config.data.synthetic_n = 24
  path = str(tmp_path_factory.mktemp("tiny_run") / "w")
  loop.train_and_evaluate(config, path)
  return path


def pytest_sessionfinish(session):
  """The process that made the session's compilation cache (xdist's controller) removes it."""
  if _OWNS_CACHE:
    shutil.rmtree(os.environ["FACEKP_JAX_TEST_CACHE"], ignore_errors=True)

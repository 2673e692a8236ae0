"""experiments/decoding.py: each read-out finds what it should on maps whose answer is known,
and the head's own read-out through the sown maps is the model's prediction."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import decoding
from facekp_jax.model import heads
from facekp_jax.serving import predictor
from facekp_jax.training import loop
from tests.conftest import kaggle_frame, random_faces, tiny_config

SIZE = 24  # Cells a side; 4 px each over the 96-px frame.


def _peaks(centres, curvature=0.5, second=None):
  """(1, SIZE, SIZE, K) logits: a concave paraboloid per map at ``centres`` (cell units, sub-cell
  allowed); ``second``: (cell, height) of a lower, narrower second peak added to every map."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  maps = []
  for cx, cy in centres:
    m = -curvature * ((xx - cx) ** 2 + (yy - cy) ** 2)
    if second is not None:
      (sx, sy), height = second
      m = np.maximum(m, height - 0.5 * ((xx - sx) ** 2 + (yy - sy) ** 2))
    maps.append(m)
  return jnp.asarray(np.stack(maps, -1)[None], jnp.float32)


def _pixels(cx, cy):
  step = 96 / SIZE
  return (cx + 0.5) * step - 0.5, (cy + 0.5) * step - 0.5


def test_dark_finds_a_sub_cell_peak_that_the_arg_max_cannot():
  centres = [(7.3, 12.6), (15.8, 4.2)]
  got = np.asarray(decoding.dark(_peaks(centres), 0.0)).reshape(-1, 2)
  want = np.array([_pixels(*c) for c in centres])
  # The binomial smoothing of a paraboloid is a paraboloid with the same peak.
  np.testing.assert_allclose(got, want, atol=1e-3)


def test_local_soft_argmax_ignores_a_far_second_mode_that_pulls_the_global_one():
  maps = _peaks([(6.0, 6.0)], curvature=0.05, second=((18.0, 18.0), -0.5))
  want = np.array(_pixels(6.0, 6.0))
  global_ = np.asarray(heads.soft_argmax(maps)).reshape(2)
  near = np.asarray(decoding.local(4)(maps, 0.0)).reshape(2)
  assert np.linalg.norm(global_ - want) > 2.0  # Pulled towards the second mode.
  np.testing.assert_allclose(near, want, atol=0.3)  # Symmetric within its window.
  # A window over the whole map is the global read-out.
  np.testing.assert_allclose(decoding.local(SIZE)(maps, 0.0), heads.soft_argmax(maps),
                             atol=1e-4)


def test_sharpening_moves_the_read_out_towards_the_higher_mode():
  maps = _peaks([(6.0, 6.0)], curvature=0.05, second=((18.0, 18.0), -0.5))
  x1 = float(heads.soft_argmax(maps)[0, 0])
  x4 = float(decoding.sharpened(4.0)(maps, 0.0)[0, 0])
  assert abs(x4 - _pixels(6.0, 6.0)[0]) < abs(x1 - _pixels(6.0, 6.0)[0])


@pytest.fixture(scope="module")
def heatmap_run(tmp_path_factory):
  """A cross_source-style scratch folder holding one finished tiny heatmap run and the two
  held-out files it is scored on."""
  scratch = tmp_path_factory.mktemp("scratch")
  config = tiny_config(**{"model.head": "heatmap", "model.heatmap_size": SIZE,
                          "num_epochs": 1, "data.synthetic_n": 24})
  workdir = scratch / "runs" / "lfw-to-web" / "default" / "seed0-abc"
  loop.train_and_evaluate(config, str(workdir))
  (workdir / "ablate.json").write_text("{}")
  (scratch / "data").mkdir()
  for name, seed in (("lfw", 1), ("web", 2)):
    images, coords = random_faces(12, seed=seed)
    kaggle_frame(images, coords).to_csv(scratch / "data" / f"mtfl-{name}-heldout.csv",
                                        index=False)
  return scratch, workdir


def test_the_heads_own_read_out_through_the_sown_maps_is_the_models_prediction(heatmap_run):
  _, workdir = heatmap_run
  model = predictor.load(str(workdir), "latest")
  images = np.asarray(random_faces(5, seed=3)[0], np.float32)[..., None] / 255.0
  np.testing.assert_allclose(decoding.decoded(model, heads.soft_argmax).predict(images),
                             model.predict(images), atol=1e-4)
  assert not np.allclose(decoding.decoded(model, decoding.local(1)).predict(images),
                         model.predict(images), atol=1e-3)


def test_the_command_scores_every_read_out_on_both_sets_and_reuses_its_cache(heatmap_run,
                                                                              tmp_path, capsys):
  scratch, workdir = heatmap_run
  out = tmp_path / "out"
  runs = decoding.main([f"--scratch={scratch}", f"--out={out}"])
  (run,) = runs
  assert run["direction"] == "lfw-to-web" and run["seed"] == 0
  assert set(run["nme"]) == set(decoding.DECODES)
  assert all(set(v) == {"in", "cross"} and all(np.isfinite(list(v.values())))
             for v in run["nme"].values())
  table = (out / "table.md").read_text()
  assert "| soft-argmax | lfw-to-web | 1 |" in table and "| dark | lfw-to-web | 1 |" in table
  cached = json.loads((workdir / "decoding.json").read_text())
  assert cached["dark"] == run["nme"]["dark"]
  # A second call reads the cache: the held-out files are no longer needed.
  moved = tmp_path / "data"
  shutil.move(str(scratch / "data"), moved)
  try:
    assert decoding.main([f"--scratch={scratch}", f"--out={out}"])[0]["nme"] == run["nme"]
  finally:
    shutil.move(str(moved), scratch / "data")


def test_without_finished_runs_the_command_says_what_to_run(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    decoding.main([f"--scratch={tmp_path}"])
  assert e.value.code == 2
  assert "python -m experiments.cross_source" in capsys.readouterr().err

"""The predictor: a workdir's chosen weights (the EMA, or raw on request), its config checked."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from facekp_jax.core import errors, sharding
from facekp_jax.serving import predictor
from facekp_jax.training import checkpoint, loop, steps


@pytest.fixture(scope="module")
def ema_workdir(tmp_path_factory):
  config = tiny.get_config()
  config.num_epochs, config.data.synthetic_n, config.ema_decay = 1, 24, 0.9
  path = str(tmp_path_factory.mktemp("ema") / "w")
  loop.train_and_evaluate(config, path)
  return path, config


def test_it_predicts_with_the_moving_average_and_with_raw_weights_on_request(ema_workdir):
  path, config = ema_workdir
  trainer = steps.Trainer(config, sharding.make_mesh())
  state, step = checkpoint.restore_trained(path, trainer.init_state, "latest")
  averaged, raw = predictor.load(path, "latest"), predictor.load(path, "latest", ema=False)
  assert averaged.step == raw.step == step
  for model, params in ((averaged, state.ema_params), (raw, state.params)):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(model.variables["params"]),
                 jax.device_get(params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(model.variables["batch_stats"]),
                 jax.device_get(state.batch_stats))
  images = np.random.default_rng(0).random((3, 96, 96, 1), dtype=np.float32)
  assert np.abs(averaged.predict(images) - raw.predict(images)).max() > 1e-3
  # The same weights the training's own validation used: Trainer.predict on the state.
  np.testing.assert_allclose(averaged.predict(images), trainer.predict(state, images), atol=1e-5)


def test_a_config_that_cannot_build_a_model_is_one_line_naming_the_field(ema_workdir, tmp_path):
  copy = tmp_path / "w"
  shutil.copytree(ema_workdir[0], copy)
  saved = json.loads((copy / "config.json").read_text())
  saved["model"]["head"] = "dense"
  (copy / "config.json").write_text(json.dumps(saved))
  with pytest.raises(errors.WorkdirError) as e:
    predictor.load(str(copy))
  assert "config.json cannot build a model (model.head must be one of" in str(e.value)
  assert "\n" not in str(e.value)

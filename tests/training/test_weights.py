"""training/weights.py: a run started from a trained model's weights (``config.init_from``),
and the refusals that come before the run writes anything."""

import os

import jax
import numpy as np
import pytest

from facekp_jax.core import errors, keypoints, sharding
from facekp_jax.serving import predictor
from facekp_jax.training import config as config_lib
from facekp_jax.training import loop, steps, weights
from tests.conftest import tiny_config


def _config(**overrides):
  return tiny_config(**{"num_epochs": 1, "data.synthetic_n": 24, **overrides})


def _leaves(variables):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(variables))]


def test_a_run_starts_from_the_named_workdirs_weights_with_a_fresh_optimizer(tiny_workdir,
                                                                             tmp_path):
  source = predictor.load(tiny_workdir, "latest")
  # A step too small to move anything: the run's weights (and their EMA: the run keeps one,
  # the source did not) are where it started.
  config = _config(init_from=tiny_workdir, learning_rate=1e-12, ema_decay=0.9,
                   **{"data.synthetic_seed": 5})
  results = loop.train_and_evaluate(config, str(tmp_path / "tuned"))
  tuned = predictor.load(str(tmp_path / "tuned"), "latest")
  assert results["steps"] == results["num_train"] // config.batch_size  # Steps from 0.
  for a, b in zip(_leaves(source.variables["params"]), _leaves(tuned.variables["params"]),
                  strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Without init_from the same run would start from its own initialisation: another place.
  fresh = steps.Trainer(config, source.inference.mesh).init_state(1)
  assert not all(np.allclose(a, b) for a, b in zip(_leaves(source.variables["params"]),
                                                   _leaves(fresh.params)))


def test_a_packed_model_starts_a_run_as_its_workdir_does(tiny_workdir, tmp_path):
  model = predictor.load(tiny_workdir, "latest")
  predictor.pack(model, str(tmp_path / "packed"))
  layout = model.layout
  mesh = model.inference.mesh
  config = _config(init_from=str(tmp_path / "packed"))
  variables, where = weights.initial(config, layout, mesh)
  assert "packed checkpoint" in where
  for a, b in zip(_leaves(model.variables), _leaves(variables), strict=True):
    np.testing.assert_allclose(a, b, atol=2e-3 * max(1.0, np.abs(a).max()))  # float16 kept.


@pytest.mark.parametrize("init_from, overrides, words", [
    ("{missing}", {}, "no such workdir or packed model"),
    ("{tiny}", {"model.stem_filters": 16}, "another network (model.stem_filters differ)"),
    ("shipped", {}, "its model reads mtfl5 keypoints, this run's data kaggle15"),
])
def test_a_bad_init_from_is_one_line_before_anything_is_written(tiny_workdir, tmp_path, init_from,
                                                               overrides, words):
  name = init_from.format(missing=tmp_path / "nowhere", tiny=tiny_workdir)
  workdir = tmp_path / "run"
  with pytest.raises(errors.ConfigError, match="config.init_from") as e:
    loop.train_and_evaluate(_config(init_from=name, **overrides), str(workdir))
  assert words in str(e.value) and "\n" not in str(e.value)
  assert not workdir.exists()


def test_training_only_model_fields_may_differ(tiny_workdir):
  model = predictor.load(tiny_workdir, "latest")
  config = _config(init_from=tiny_workdir, **{"model.dropout_rates": (0.5,),
                                              "model.kernel_init": "glorot_uniform"})
  assert weights.initial(config, model.layout, model.inference.mesh) is not None
  assert weights.initial(_config(), model.layout, model.inference.mesh) is None


def test_has_steps_sees_a_checkpointed_workdir(tiny_workdir, tmp_path):
  assert weights.checkpoint.has_steps(tiny_workdir)
  assert not weights.checkpoint.has_steps(str(tmp_path))
  os.makedirs(tmp_path / "checkpoints" / "tmp")
  assert not weights.checkpoint.has_steps(str(tmp_path))


def test_todays_default_network_starts_from_the_shipped_model():
  """The README's fine-tuning command: configs/resnet.py's network is the shipped model's."""
  config = config_lib.defaults()
  config.init_from = "shipped"
  variables, where = weights.initial(config, keypoints.get("mtfl5"), sharding.make_mesh())
  assert where.startswith(weights.SHIPPED) and "packed" in where
  assert variables["params"]["heatmap"]["keypoint_maps"]["kernel"].shape[-1] == 5

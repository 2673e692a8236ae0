"""Optimizer and schedule from the config: the default is exactly constant Adam."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import resnet, tiny
from facekp_jax.core import errors, sharding
from facekp_jax.serving import predictor
from facekp_jax.training import checkpoint, loop, optim, steps
from facekp_jax.training import config as config_lib


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"dense": {"kernel": jax.random.normal(k1, (4, 3)), "bias": jnp.ones((3,))},
          "norm": {"scale": jnp.ones((3,))},
          "conv": {"kernel": jax.random.normal(k2, (3, 3, 2, 2))}}


def _config(**fields):
  config = tiny.get_config()
  for key, value in fields.items():
    config[key] = value
  return config


def _lr(config, steps_per_epoch, step):
  lr = optim.learning_rate(config, steps_per_epoch)
  return float(lr(step)) if callable(lr) else float(lr)


def test_a_constant_rate_is_bit_identical_to_constant_adam():
  config = resnet.get_config()
  config.schedule, config.warmup_epochs = "constant", 0.0  # No warm-up: the seed's Adam.
  assert config.optimizer == "adam"
  params = _params()
  ours, ref = optim.make_optimizer(config, 10), optax.adam(config.learning_rate)
  s_ours, s_ref = ours.init(params), ref.init(params)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
  for i in range(3):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params)
    u_ours, s_ours = ours.update(grads, s_ours, params)
    u_ref, s_ref = ref.update(grads, s_ref, params)
    jax.tree.map(np.testing.assert_array_equal, u_ours, u_ref)


def test_configs_saved_before_the_fields_still_build_constant_adam():
  saved = json.loads(tiny.get_config().to_json())
  for field in ("optimizer", "schedule", "warmup_epochs", "weight_decay", "adam_eps"):
    del saved[field]
  config = ml_collections.ConfigDict(config_lib.upgrade(saved))  # As a workdir is read.
  assert optim.learning_rate(config, 10) == config.learning_rate


@pytest.mark.parametrize("optimizer", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_state_structure_does_not_depend_on_steps_per_epoch(optimizer, schedule):
  """A restore target built without the data's size fits a checkpoint of the real run."""
  config = _config(optimizer=optimizer, schedule=schedule, warmup_epochs=0.5)
  shapes = [jax.eval_shape(optim.make_optimizer(config, n).init, _params()) for n in (None, 37)]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])


def test_cosine_and_warmup_shapes():
  config = _config(num_epochs=4, learning_rate=1e-3, schedule="cosine", warmup_epochs=0.0)
  assert _lr(config, 10, 0) == pytest.approx(1e-3)
  assert _lr(config, 10, 20) == pytest.approx(5e-4, rel=1e-4)
  assert _lr(config, 10, 40) == pytest.approx(0.0, abs=1e-9)
  config.warmup_epochs = 1.0
  assert _lr(config, 10, 0) == 0.0 and _lr(config, 10, 5) == pytest.approx(5e-4)
  assert _lr(config, 10, 10) == pytest.approx(1e-3)
  config.schedule = "constant"
  assert _lr(config, 10, 5) == pytest.approx(5e-4) and _lr(config, 10, 39) == pytest.approx(1e-3)


def test_onecycle_peaks_at_the_learning_rate_after_its_rise():
  config = _config(num_epochs=10, learning_rate=1e-3, schedule="onecycle", warmup_epochs=0.0)
  rates = [_lr(config, 10, s) for s in range(101)]
  assert int(np.argmax(rates)) == 30 and max(rates) == pytest.approx(1e-3)  # 0: 30 % of the run.
  assert rates[0] == pytest.approx(1e-3 / 25) and rates[-1] < 1e-6
  config.warmup_epochs = 2.0
  assert int(np.argmax([_lr(config, 10, s) for s in range(101)])) == 20
  config.warmup_epochs = resnet.get_config().warmup_epochs  # The default's rise: 0.1 epoch.
  assert int(np.argmax([_lr(config, 10, s) for s in range(101)])) == 1


def test_adamw_decays_kernels_only():
  params = _params()
  tx = optim.make_optimizer(_config(optimizer="adamw", weight_decay=0.1, learning_rate=1.0), 1)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * params["dense"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * params["conv"]["kernel"],
                             rtol=1e-6)
  assert not jnp.any(updates["dense"]["bias"]) and not jnp.any(updates["norm"]["scale"])


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "optimizer must be one of"),
    ("schedule", "step", "schedule must be one of"),
    ("weight_decay", -1.0, "weight_decay must be >= 0"),
    ("warmup_epochs", 2.0, "warmup_epochs must be in [0, num_epochs=2)"),
    ("learning_rate", 0.0, "learning_rate must be > 0"),
])
def test_config_check_names_the_bad_field(field, value, message):
  config = _config(**{field: value})
  with pytest.raises(errors.ConfigError) as e:
    config_lib.check_config(config, num_devices=1)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_scheduled_adamw_run_trains_and_its_checkpoint_restores(tmp_path):
  """The restore target is built without the data's size (``checkpoint.restore_trained`` with
  ``init_state()``, as ``predictor.load`` builds it): it still fits."""
  config = _config(optimizer="adamw", schedule="onecycle", num_epochs=2)
  config.data.synthetic_n = 24
  results = loop.train_and_evaluate(config, str(tmp_path / "w"))
  assert results["steps"] == 4 and np.isfinite(results["val_rmse"])
  trainer = steps.Trainer(config, sharding.make_mesh())
  state, step = checkpoint.restore_trained(str(tmp_path / "w"), trainer.init_state, "latest")
  assert step == 4
  assert int(state.opt_state[0].count) == 4  # Adam's moments came back with the step.
  assert predictor.load(str(tmp_path / "w"), "latest").step == 4

"""Every shipped config loads, passes the checks, and documents the command that runs it."""

import importlib
import pathlib

import pytest

from facekp_jax.training import config as config_lib

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_documents_its_command(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  config_lib.check_config(config, num_devices=1)
  assert f"--config=configs/{name}.py" in module.__doc__
  for field in ("num_epochs", "batch_size", "learning_rate", "seed"):
    assert field in config
  for field in ("train_csv", "rows", "val_fraction"):
    assert field in config.data


def test_seed_replica_keeps_the_seed_faults_and_resnet_does_not():
  from configs import resnet, seed_keras
  seed, fixed = seed_keras.get_config(), resnet.get_config()
  assert seed.model.output_activation == "relu" and fixed.model.output_activation == "linear"
  assert seed.model.head == "regression" and fixed.model.head == "heatmap"
  assert not seed.augment.hflip_swap and fixed.augment.hflip_swap
  assert seed.data.seed_copies and not fixed.data.seed_copies
  assert seed.data.rows == "complete" and fixed.data.rows == "all"  # The `rows` ablation.
  assert fixed.augment.vflip_prob == 0.0
  # The seed's budget and constant step; the default's one-cycle run is shorter (issue 27).
  assert (seed.num_epochs, seed.batch_size, seed.learning_rate, seed.schedule,
          seed.warmup_epochs) == (50, 32, 1e-4, "constant", 0.0)
  assert (fixed.num_epochs, fixed.batch_size, fixed.learning_rate, fixed.schedule,
          fixed.warmup_epochs) == (12, 16, 4e-3, "onecycle", 0.1)
  from configs import tiny  # The tests' reference recipe: a constant step, no warm-up.
  assert (tiny.get_config().schedule, tiny.get_config().warmup_epochs) == ("constant", 0.0)


def test_a_saved_config_gets_the_behaviour_of_the_fields_it_predates():
  import json

  from configs import resnet
  from facekp_jax.training import config as config_lib
  from facekp_jax.training import workdir as workdir_lib
  new = resnet.get_config()
  saved = json.loads(new.to_json())
  for field in ("loss", "ema_decay"):
    del saved[field]
  del saved["model"]["head"], saved["augment"]["geometry_prob"]
  upgraded = config_lib.upgrade(saved)
  assert (upgraded["model"]["head"], upgraded["loss"], upgraded["ema_decay"]) == (
      "regression", "mse", 0.0)  # What the project did before these fields existed.
  assert upgraded["augment"]["geometry_prob"] == 0.0 and "head" not in saved["model"]
  # Resuming such a run under today's defaults is a change where they differ from the past.
  diffs = workdir_lib.config_differences(saved, new)
  assert any(d.startswith("model.head: 'regression' -> 'heatmap'") for d in diffs)
  for field, legacy in config_lib.LEGACY.items():  # Each names a real config field.
    node = new
    for part in field.split("."):
      node = node[part]
    assert type(node) is type(legacy) or isinstance(legacy, float), field

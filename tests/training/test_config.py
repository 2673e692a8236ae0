"""The config's fields, declared once: defaults, checks, old workdirs' values, the rules."""

import json

import pytest

from configs import resnet, tiny
from facekp_jax.core import errors
from facekp_jax.training import config as config_lib
from facekp_jax.training import workdir as workdir_lib


def _flat(config) -> dict:
  return _flat_dict(json.loads(config.to_json()))


def test_each_field_is_declared_once_with_its_default_and_a_one_line_doc():
  names = [f.name for f in config_lib.FIELDS]
  assert len(names) == len(set(names))
  assert sorted(_flat(config_lib.defaults())) == sorted(names)
  for f in config_lib.FIELDS:
    assert f.doc and "\n" not in f.doc and len(f.doc) < 120, f.name


def test_each_check_accepts_its_default_and_its_legacy_value():
  for f in config_lib.FIELDS:
    if f.check:
      assert f.check(f.default) is None, f.name
      if f.name in config_lib.LEGACY:
        assert f.check(config_lib.LEGACY[f.name]) is None, f.name


def test_a_bad_value_is_named_with_its_field():
  config = tiny.get_config()
  config.augment.rotate_deg, config.model.kernel_init = 200.0, "zeros"
  assert config_lib.problems(config) == [
      "augment.rotate_deg must be in [0, 180], got 200.0",
      "model.kernel_init must be one of ['lecun_normal', 'glorot_uniform'], got 'zeros'"]
  with pytest.raises(errors.ConfigError, match="rotate_deg.*; model.kernel_init"):
    config_lib.check_config(config, num_devices=1)


def test_loss_config_problems_name_the_field():
  config = tiny.get_config()
  config.loss = "huber"
  assert config_lib.problems(config) == [
      "loss must be one of ['mse', 'l1', 'smooth_l1', 'wing'], got 'huber'"]
  bad = tiny.get_config()
  bad.loss, bad.wing_epsilon = "wing", 0.0
  assert config_lib.problems(bad) == ["wing_w and wing_epsilon must be > 0, got 10.0, 0.0"]


def test_a_bad_model_field_leaves_the_model_rules_out():
  config = tiny.get_config()
  config.model.head, config.model.heatmap_stages = "dense", 9
  assert config_lib.problems(config) == [
      "model.head must be one of ['regression', 'heatmap'], got 'dense'"]
  config.model.head = "heatmap"
  assert [p[:24] for p in config_lib.problems(config)] == ["model.heatmap_stages mus"]
  # The regression head has no maps: a one-stage network takes the default levels.
  config.model.head = "regression"
  config.model.heatmap_stages = config_lib.defaults().model.heatmap_stages
  config.model.stage_filters, config.model.stage_blocks = ((4, 4, 8),), (1,)
  assert config.model.heatmap_stages > 2 and config_lib.problems(config) == []


# What each field meant before it existed, as released: a legacy value never changes (old
# workdirs depend on it); fields added later add entries, which this does not pin.
RELEASED_LEGACY = {
    "optimizer": "adam", "weight_decay": 1e-4, "schedule": "constant", "warmup_epochs": 0.0,
    "adam_eps": 1e-8, "input_on_device": False, "steps_per_call": 1, "tta": False,
    "tta_rotations": (), "loss": "mse", "smooth_l1_beta": 1.0, "wing_w": 10.0,
    "wing_epsilon": 2.0, "ema_decay": 0.0, "data.flip_copies": False, "data.bad_labels": "error",
    "augment.geometry_prob": 0.0, "augment.rotate_deg": 0.0, "augment.scale_range": (1.0, 1.0),
    "augment.shift_px": 0.0, "model.head": "regression", "model.heatmap_size": 48,
    "model.heatmap_margin": 0.0, "model.heatmap_stages": 1, "model.kernel_init": "lecun_normal"}


def test_released_legacy_values_never_change():
  assert {k: config_lib.LEGACY.get(k) for k in RELEASED_LEGACY} == RELEASED_LEGACY


def test_a_workdir_of_before_every_field_upgrades_to_the_legacy_values():
  saved = json.loads(resnet.get_config().to_json())
  for dotted in config_lib.LEGACY:
    *parents, name = dotted.split(".")
    node = saved
    for parent in parents:
      node = node[parent]
    del node[name]
  upgraded = _flat_dict(config_lib.upgrade(saved))
  for dotted, value in config_lib.LEGACY.items():
    assert upgraded[dotted] == value, dotted
  diffs = workdir_lib.config_differences(saved, resnet.get_config())
  assert "ema_decay: 0.0 -> 0.999" in diffs and not any(d.startswith("seed") for d in diffs)


def _flat_dict(d, prefix=""):
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat_dict(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def test_the_map_loss_weight_is_checked_and_the_regression_head_takes_the_defaults():
  config = config_lib.defaults()
  assert config.heatmap_loss > 0 and config_lib.problems(config) == []
  config.model.head = "regression"  # No maps: the weight does not apply (losses.map_sum).
  assert config_lib.problems(config) == []
  config.heatmap_loss, config.heatmap_loss_sigma = -1.0, 0.0
  found = " ".join(config_lib.problems(config))
  assert "heatmap_loss must be >= 0.0" in found and "heatmap_loss_sigma must be > 0" in found


def test_a_late_field_at_its_legacy_value_leaves_a_runs_identity_as_it_was():
  """Experiments name runs by ``identity``'s hash: a field added later (``late``) that does
  what the project did before it existed leaves the name of every earlier run unchanged."""
  config = config_lib.defaults()
  late = [f for f in config_lib.FIELDS if f.late]
  assert late and all(f.legacy is not None for f in late)
  for f in late:  # Each at what the project did before it existed.
    *parents, last = f.name.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[last] = f.legacy
  before = config.to_dict()
  for f in late:
    *parents, last = f.name.split(".")
    node = before
    for part in parents:
      node = node[part]
    del node[last]  # As a config from before these fields existed.
  assert config_lib.identity(config) == json.dumps(before, sort_keys=True, default=list)
  config.heatmap_loss = 1.0  # Not at its legacy value: another run.
  assert '"heatmap_loss": 1.0' in config_lib.identity(config)
  config.heatmap_loss, config.seed = 0.0, 5  # Other fields always count.
  assert '"seed": 5' in config_lib.identity(config)

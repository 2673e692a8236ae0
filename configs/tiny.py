"""A tiny network and budget, for tests and quick looks (seconds on a laptop CPU).

  python -m facekp_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

# configs/resnet.py is these defaults; importing them from the package lets a copy load anywhere.
from facekp_jax.training import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.num_epochs = 2
  config.batch_size = 8
  config.learning_rate = 1e-3  # A constant step: two epochs are too few for a schedule's
  config.schedule = "constant"  # rise and fall.
  config.warmup_epochs = 0.0
  config.eval_batch_size = 16
  config.data.synthetic_n = 64
  config.model.stage_filters = ((4, 4, 8), (8, 8, 16))
  config.model.stage_blocks = (2, 1)
  config.model.stem_filters = 8
  # The seed's dense head, tiny: cheaper than 48x48 heatmaps (tests/model/test_heads.py trains
  # those).
  config.model.head = "regression"
  config.model.dense_sizes = (32,)
  config.model.dropout_rates = (0.1,)
  # Conv biases before batch norm only add rounding noise that Adam amplifies.
  config.model.conv_bias = False
  # The tests' reference recipe: no warp, EMA or flip TTA unless a test asks for them (their
  # own tests do), so the tests of everything else stay as cheap and exact as they were.
  config.augment.geometry_prob = 0.0
  config.ema_decay = 0.0
  config.tta = False
  config.model.output_scale, config.model.output_offset = 48.0, 48.0  # Unit-scaled outputs.
  config.model.heatmap_stages = 1  # Heatmap tests: the last stage's maps unless they ask.
  return config

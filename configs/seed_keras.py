"""A faithful replica of the seed Keras notebook's recipe, for comparison only.

  python -m facekp_jax.main --config=configs/seed_keras.py

Reproduces the seed's choices, faults included: a ReLU output on raw pixel
targets, Adam 1e-4, horizontal flips that do not swap left/right labels, and
the training set enlarged once by fixed copies (horizontal flip; that copy also
flipped vertically; brightness x U(1.5, 2) clipped). Not reproduced: the seed
split *after* copying (validation faces leaked into training); here the copies
are made from the training split only, so the validation RMSE stays honest.
The flip maps x -> 95 - x (this project's pixel-centre convention; the seed
used 96 - x, a 1 px difference).
"""

# configs/resnet.py is these defaults; importing them from the package lets a copy load anywhere.
from facekp_jax.training import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.num_epochs = 50  # The seed's budget and step: 50 epochs of batch 32 at Adam 1e-4,
  config.batch_size = 32
  config.learning_rate = 1e-4
  config.schedule = "constant"  # never decayed,
  config.warmup_epochs = 0.0  # nor warmed up.
  config.data.rows = "complete"  # The seed trained on the 2140 complete rows.
  config.data.seed_copies = True
  config.augment.hflip_prob = 0.0  # No online augmentation: the copies are fixed.
  config.augment.vflip_prob = 0.0
  config.augment.brightness_prob = 0.0
  config.augment.hflip_swap = False
  config.augment.brightness_range = (1.5, 2.0)
  config.augment.geometry_prob = 0.0  # The seed had no geometric augmentation,
  config.ema_decay = 0.0  # no weight averaging,
  config.tta = False  # and no test-time flips.
  config.model.head = "regression"  # The seed's dense layers,
  config.loss = "mse"  # trained on the mean squared error.
  config.model.output_activation = "relu"
  config.model.output_scale = 1.0
  config.model.output_offset = 0.0
  return config

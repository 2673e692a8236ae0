"""The default recipe: the seed's deep residual network with the seed's faults fixed.

  python -m facekp_jax.main --config=configs/resnet.py
  python -m facekp_jax.main --config=configs/resnet.py --config.data.train_csv=training.csv

Every field, its default and what it means are declared once, in
facekp_jax/training/config.py (``FIELDS``); this config is those defaults. The evidence behind
them (the head, the warp, the EMA, test-time augmentation, the learning rate, raw-pixel
outputs) is in experiments/README.md. configs/tiny.py and configs/seed_keras.py override a
handful of fields.
"""

from facekp_jax.training import config as config_lib


def get_config():
  return config_lib.defaults()

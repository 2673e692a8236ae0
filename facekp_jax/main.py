"""Trains a keypoint ResNet: ``python -m facekp_jax.main --config=configs/resnet.py``.

Kept short on purpose: flags, the multi-process start, one topology line, one call into the
trainer. Several processes (hosts) run the same command with ``--distributed=auto`` (Cloud TPU,
SLURM, Open MPI) or ``--distributed=manual --coordinator_address=HOST:PORT --num_processes=N
--process_id=I``, and the same ``--workdir`` on shared storage.
"""

import os
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from facekp_jax import cli
from facekp_jax.core import host_memory, sharding
from facekp_jax.training import distributed, interrupts, loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder (default: a fresh folder under runs/).")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir even though its saved config differs from --config.")
flags.DEFINE_enum("distributed", "off", distributed.MODES,
                  "Several processes: off (one process drives all local devices), auto (take "
                  "the three values below from Cloud TPU / SLURM / Open MPI), manual (give them).")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0, the same in every process (manual; overrides auto).")
flags.DEFINE_integer("num_processes", None, "Number of processes (manual; overrides auto).",
                     lower_bound=1)
flags.DEFINE_integer("process_id", None, "This process's index from 0 (manual; overrides auto).",
                     lower_bound=0)
flags.mark_flags_as_required(["config"])


def _parse_flags(argv):
  """Parses flags; a bad flag or config override is one line on stderr and exit code 2."""
  try:
    argv = FLAGS(argv)
    FLAGS.config.to_dict()  # The config file loads lazily: make its errors surface here.
    return argv
  except (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    message = " ".join(str(e).replace("\\n", " ").replace("\\", "").split())
    while len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      message = message[1:-1]  # KeyError quotes ml_collections' own (quoted) message.
    if isinstance(e, (KeyError, AttributeError)):
      message = f"unknown config field {message}"
    cli.fail(f"bad flag or config override: {message}")


def _quiet_libraries(record) -> bool:
  """Keeps Orbax's and JAX's routine INFO and WARNING lines out of the run's log."""
  noisy = ("/orbax/", "/jax/_src/", "xla_bridge")
  return record.levelno > logging.converter.STANDARD_WARNING or not any(
      n in record.pathname for n in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (core/host_memory.py).
  logging.get_absl_handler().addFilter(_quiet_libraries)
  try:
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
    if FLAGS.workdir is None and jax.process_count() > 1:  # Each would name its own folder.
      raise distributed.DistributedError("several processes need --workdir, one folder on "
                                         "storage they all share")
  except distributed.DistributedError as e:
    cli.fail(e)
  workdir = FLAGS.workdir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
  logging.info("%s", sharding.topology())
  try:
    with cli.user_errors():
      loop.train_and_evaluate(FLAGS.config, workdir,
                              allow_config_change=FLAGS.allow_config_change)
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except interrupts.Interrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)

"""Trains a keypoint ResNet: ``python -m facekp_jax.main --config=configs/resnet.py``.

Kept short on purpose: flags, the multi-process start, one topology line, one call into the
trainer. Several processes (hosts) run the same command with ``--distributed=auto`` (Cloud TPU,
SLURM, Open MPI) or ``--distributed=manual --coordinator_address=HOST:PORT --num_processes=N
--process_id=I``, and the same ``--workdir`` on shared storage.
"""

import os
import shlex
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from facekp_jax import cli
from facekp_jax.core import host_memory, sharding
from facekp_jax.training import checkpoint, distributed, interrupts, loop

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


def _config_path(argv) -> str | None:
  """The --config file's path as given in ``argv`` (without a ``:argument``), or None."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a[len("--config="):].split(":", 1)[0]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _config_file_problem(path: str) -> str | None:
  """What keeps ``path`` from being a config file, in words, or None."""
  if os.path.isdir(path):
    return f"config file {path} is a folder; give a .py file with get_config()"
  if not os.path.isfile(path):
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    names = sorted(n for n in os.listdir(shipped) if n.endswith(".py")) if os.path.isdir(
        shipped) else []
    return f"config file {path} not found" + (
        f" (the repository's: {', '.join('configs/' + n for n in names)})" if names else "")
  return None


def _parse_flags(argv):
  """Parses flags; a bad flag, config file or config override is one line on stderr and exit
  code 2."""
  path = _config_path(argv[1:])
  problem = path is not None and _config_file_problem(path)
  if problem:
    cli.fail(problem)
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
  except Exception as e:  # pylint: disable=broad-except  # The config file's own code failed.
    cli.fail(f"config file {path} does not load: {type(e).__name__}: {e}")


def _quiet_libraries(record) -> bool:
  """Keeps Orbax's and JAX's routine INFO and WARNING lines out of the run's log."""
  noisy = ("/orbax/", "/jax/_src/", "xla_bridge")
  return record.levelno > logging.converter.STANDARD_WARNING or not any(
      n in record.pathname for n in noisy)


def train(config, workdir: str, allow_config_change: bool = False,
          resume: str | None = None) -> None:
  """Trains as the command does: a user error ends in one line and exit code 2, a non-finite
  loss exit code 3, a signal N 128 + N (after a checkpoint). ``resume``: the exact command that
  resumes, where a plain rerun would not (the workdir was chosen here)."""
  try:
    with cli.user_errors(resume):
      loop.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except interrupts.Interrupted as e:
    print(cli.resume_with(str(e), resume), file=sys.stderr)
    sys.exit(128 + e.signum)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  host_memory.reuse_freed_memory()  # Before JAX starts its CPU client (core/host_memory.py).
  logging.get_absl_handler().addFilter(_quiet_libraries)
  checkpoint.quiet_late_callbacks()
  cli.before_jax()  # XLA ends the process on a bad flag; the compilation cache.
  try:
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
    if FLAGS.workdir is None and jax.process_count() > 1:  # Each would name its own folder.
      raise distributed.DistributedError("several processes need --workdir, one folder on "
                                         "storage they all share")
  except distributed.DistributedError as e:
    cli.fail(e)
  workdir, resume = FLAGS.workdir, None
  if workdir is None:  # A rerun would choose another folder: say which command resumes.
    workdir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    resume = shlex.join(["python", "-m", "facekp_jax.main", *sys.argv[1:],
                         f"--workdir={workdir}"])
  logging.info("%s", sharding.topology())
  logging.info("workdir %s%s", workdir, f" (resume with: {resume})" if resume else "")
  train(FLAGS.config, workdir, FLAGS.allow_config_change, resume)


if __name__ == "__main__":
  cli.run_as_process(lambda: app.run(main, flags_parser=_parse_flags))

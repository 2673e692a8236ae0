"""The command lines' one style: absl flags, shared model flags, one-line user errors (exit 2).

``main`` (training) parses the process-wide absl ``FLAGS`` through ``absl.app``, as
flax examples and big_vision do. The commands that read a trained workdir (evaluate,
predict, export) each build their own ``flags.FlagValues`` in ``main(argv)`` with
``command_flags`` (so that one process, a test or a notebook, can call several of them,
and each call parses afresh), take the shared ``--workdir``, ``--checkpoint`` and
``--[no]tta`` from ``define_model_flags`` and read them with ``parse``. Booleans are absl's
``--flag`` / ``--noflag``; positional arguments (image files) may sit between flags.

A user's mistake (a bad flag, a bad file, an unusable workdir, a failing disk) ends a
command with one line on stderr, ``error: ...``, and exit code 2 (``fail``, ``user_errors``).
"""

from __future__ import annotations

import contextlib
import sys
from typing import NoReturn

from absl import flags, logging

from facekp_jax.core import errors
from facekp_jax.model import tta as tta_lib
from facekp_jax.serving import predictor
from facekp_jax.training import checkpoint, lock

# Problems with the user's input, config or storage: one line on stderr, exit code 2.
USER_ERRORS = (errors.DataError, errors.WorkdirError, errors.ConfigError, lock.WorkdirBusy)


def fail(message) -> NoReturn:
  """Ends a command on a user error: one line on stderr, exit code 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def usage_error(message) -> NoReturn:
  """Ends a command on a bad or inconsistent flag."""
  fail(f"bad flag: {message}")


@contextlib.contextmanager
def user_errors():
  """``USER_ERRORS`` and OS errors raised inside become ``fail``'s one line."""
  try:
    yield
  except USER_ERRORS as e:
    fail(e)
  except OSError as e:  # Some (Orbax's) carry a message and no file name.
    fail(f"{e.filename}: {e.strerror or e}" if e.filename else (e.strerror or e))


def quiet_libraries() -> None:
  """Keeps Orbax's and JAX's routine INFO and WARNING lines out of a command's output."""
  logging.set_verbosity(logging.ERROR)


def command_flags() -> flags.FlagValues:
  """A fresh flag set for one command invocation."""
  return flags.FlagValues()


def define_model_flags(fv: flags.FlagValues, shipped: bool = False) -> None:
  """The flags of every command that loads a trained workdir: --workdir, --checkpoint, --tta.

  ``shipped``: --workdir may be left out, for the model shipped in the package."""
  flags.DEFINE_string("workdir", None, "a training workdir (or a packed model)" + (
      "; default: the model shipped in the package (5 points, MTFL)" if shipped else ""),
      flag_values=fv)
  if not shipped:
    flags.mark_flag_as_required("workdir", flag_values=fv)
  flags.DEFINE_enum("checkpoint", "best", checkpoint.CHECKPOINTS,
                    "best by validation RMSE (default), or latest", flag_values=fv)
  flags.DEFINE_bool("tta", None, "flip test-time augmentation (--notta: off; default: the run's "
                    "config.tta)", flag_values=fv)
  flags.DEFINE_list("tta_rotations", None, "with TTA, also views turned by -a and +a degrees "
                    "for each angle a (e.g. 10; 'none': flips only; default: the run's "
                    "config.tta_rotations)", flag_values=fv)


def parse(fv: flags.FlagValues, prog: str, description: str, argv=None,
          positional: bool = False) -> list[str]:
  """Parses ``argv`` (default ``sys.argv[1:]``) into ``fv``; returns the positional arguments.

  ``--help`` prints the flags and exits 0; a bad flag, or a positional argument where the
  command takes none (``positional=False``), is ``usage_error``'s one line.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    print(f"usage: {prog} [flags]\n\n{description}\n{fv.get_help(include_special_flags=False)}")
    sys.exit(0)
  try:
    rest = fv([prog, *argv])[1:]
  except flags.Error as e:  # absl words them "flag --name=value: problem".
    message = str(e)
    usage_error(message[len("flag "):] if message.startswith("flag ") else message)
  if rest and not positional:
    usage_error(f"unexpected arguments: {' '.join(rest)}")
  return rest


def tta(fv: flags.FlagValues, model: predictor.Predictor) -> bool:
  """Whether ``model`` predicts with TTA: --tta as given, else the run's ``config.tta``;
  --tta_rotations, when given, replaces the run's ``config.tta_rotations``."""
  return model.use_tta(fv.tta, tta_rotations(fv))


def tta_rotations(fv: flags.FlagValues) -> tuple[float, ...] | None:
  """--tta_rotations as angles (``none``: no turned views), or None where not given."""
  if fv.tta_rotations is None:
    return None
  try:
    angles = tuple(float(a) for a in fv.tta_rotations if a.lower() != "none")
  except ValueError:
    angles = tuple(fv.tta_rotations)
  problems = tta_lib.problems(angles)
  if problems:
    usage_error(f"--tta_rotations: {problems[0]}")
  return angles

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
import os
import select
import signal
import sys
import time
from typing import NoReturn

import jax
from absl import flags, logging

from facekp_jax.core import errors
from facekp_jax.model import tta as tta_lib
from facekp_jax.serving import predictor
from facekp_jax.training import checkpoint, lock

# Problems with the user's input, config or storage: one line on stderr, exit code 2.
USER_ERRORS = (errors.DataError, errors.WorkdirError, errors.ConfigError, lock.WorkdirBusy)
CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"  # JAX's own: read when jax is imported.


def fail(message) -> NoReturn:
  """Ends a command on a user error: one line on stderr, exit code 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def run_as_process(main, *args) -> None:
  """Runs a command's ``main`` as the process (``if __name__ == "__main__"``): where it ends in
  an error (a non-zero exit code), the process ends there, its output flushed, without Python's
  shutdown, in which Orbax's, TensorStore's and asyncio's half-done work would print thousands of
  lines after the one line. Every file a run writes appears whole or not at all (as after a
  kill, which the checkpoint tests prove harmless), so nothing is lost by not waiting."""
  try:
    main(*args)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if code == 0:
      raise
    if not isinstance(e.code, int):
      print(e.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    os._exit(code)


def usage_error(message) -> NoReturn:
  """Ends a command on a bad or inconsistent flag."""
  fail(f"bad flag: {message}")


def resume_with(message: str, resume: str | None) -> str:
  """``message`` with its "run the same command again" (``errors.RESUME``) replaced by the
  exact command ``resume``, where given."""
  return message.replace(errors.RESUME, f"resume with: {resume}") if resume else message


@contextlib.contextmanager
def user_errors(resume: str | None = None):
  """``USER_ERRORS`` and OS errors raised inside become ``fail``'s one line (``resume``: the
  command that resumes, for ``resume_with``)."""
  try:
    yield
  except USER_ERRORS as e:
    fail(resume_with(str(e), resume))
  except OSError as e:  # Some (Orbax's) carry a message and no file name.
    fail(f"{e.filename}: {e.strerror or e}" if e.filename else (e.strerror or e))


def before_jax() -> None:
  """What a command does before JAX starts a backend: ``check_xla_flags``, then the persistent
  compilation cache (``compilation_cache``)."""
  check_xla_flags()
  compilation_cache()


def compilation_cache_dir() -> str | None:
  """Where the commands keep compiled programs between runs: ``JAX_COMPILATION_CACHE_DIR``
  where it is set (empty: nowhere), else ``$XDG_CACHE_HOME/facekp_jax/jax`` (~/.cache/...)."""
  if CACHE_VARIABLE in os.environ:
    return os.environ[CACHE_VARIABLE] or None
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "facekp_jax", "jax")


def compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache in ``compilation_cache_dir()``; returns it.

  A later run of the same model finds its training and evaluation programs compiled (JAX keys
  an entry by the program, the backend and the versions: a changed model compiles anew). A
  folder that cannot be made leaves the cache off; a failing read or write of an entry is
  JAX's warning and a compilation, never an error.
  """
  path = compilation_cache_dir()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    logging.info("no persistent compilation cache: %s: %s", path, e.strerror or e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def check_xla_flags() -> None:
  """Fails in one line on an ``XLA_FLAGS`` that XLA would refuse, before this process starts a
  backend: XLA ends the process on an unknown flag (exit code 1, a C++ log line). A forked child
  starts the CPU backend to find out (milliseconds; only where XLA_FLAGS is set)."""
  if not os.environ.get("XLA_FLAGS", "").strip():
    return
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:  # The child: start a backend with these flags; XLA exits 1 on a bad one.
    try:
      os.dup2(write, 2)
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_platforms", "cpu")
      jax.devices()
    finally:  # Any other failure is not the flags': the parent's own start will tell.
      os._exit(0)
  os.close(write)
  said, deadline = b"", time.monotonic() + 60
  with os.fdopen(read, "rb", buffering=0) as f:
    while select.select([f], [], [], max(0.0, deadline - time.monotonic()))[0]:
      chunk = f.read(65536)
      if not chunk:  # The child has ended.
        break
      said += chunk
    else:  # A child stuck for any reason is let go.
      os.kill(pid, signal.SIGKILL)
  _, status = os.waitpid(pid, 0)
  if os.waitstatus_to_exitcode(status) > 0:
    lines = [line.split("] ", 1)[-1] for line in said.decode(errors="replace").splitlines()
             if "XLA_FLAGS" in line]
    fail(f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}: "
         f"{lines[-1] if lines else 'XLA refuses these flags'}; mend or unset XLA_FLAGS")


def quiet_libraries() -> None:
  """Keeps Orbax's and JAX's routine INFO and WARNING lines, and the tracebacks TensorStore
  prints of a failed read, out of a command's output."""
  logging.set_verbosity(logging.ERROR)
  checkpoint.quiet_late_callbacks()


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

"""The user-facing errors: each is one line that a command prints before it exits with code 2."""

from collections.abc import Iterator


class DataError(ValueError):
  """A one-line, user-facing description of a problem with an input file."""


class WorkdirError(ValueError):
  """A workdir that cannot be used, described in one line."""


class ConfigError(ValueError):
  """A config value that cannot work, described in one line."""


# How a message says to go on after an interrupt or a disk failure; the training command puts
# the exact command in its place where it chose the workdir itself (a plain rerun would not
# find that workdir).
RESUME = "run the same command again to resume"


def chain(error: BaseException | None) -> Iterator[BaseException]:
  """``error`` and the errors it was raised from or while handling, each once (libraries such
  as Orbax wrap the error that tells what happened)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__

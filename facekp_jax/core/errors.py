"""The user-facing errors: each is one line that a command prints before it exits with code 2."""


class DataError(ValueError):
  """A one-line, user-facing description of a problem with an input file."""


class WorkdirError(ValueError):
  """A workdir that cannot be used, described in one line."""


class ConfigError(ValueError):
  """A config value that cannot work, described in one line."""

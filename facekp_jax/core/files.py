"""Files that appear whole: the one atomic writer, JSON and CSV through it, JSON-safe values.

Everything the project writes goes through ``atomic_write`` (a reader never sees half a file);
``jsonable`` makes figures standard JSON.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

# The process's umask (read once, at import, before any thread runs): a written file gets the
# mode a plain ``open`` would give it, not ``mkstemp``'s 0600.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str, write) -> None:
  """Calls ``write(f)`` on a binary temporary file in ``path``'s folder, then renames it there.

  A killed writer never leaves half a file under the final name, and readers see the old file
  or the new one. The temporary name keeps ``path``'s ending and starts with ``.tmp-``.
  The file gets the mode ``open`` gives (0666 less the umask). An ``OSError`` of the
  temporary file (a full or read-only disk, ``path`` a folder) names ``path``, the file the
  caller asked for.
  """
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.fchmod(fd, 0o666 & ~_UMASK)
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno is not None and (
        e.filename is None or os.path.basename(str(e.filename)).startswith(".tmp-")):
      raise OSError(e.errno, e.strerror, path) from e
    raise


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as indented JSON, atomically (``jsonable`` makes it standard JSON)."""
  atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_csv(path: str, frame, **to_csv) -> None:
  """Writes a pandas frame without its index, atomically (``to_csv``: pandas' options)."""
  atomic_write(path, lambda f: frame.to_csv(f, index=False, **to_csv))


def jsonable(obj):
  """Tuples to lists, NaN and infinities to None, recursively: standard JSON."""
  if isinstance(obj, dict):
    return {k: jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj

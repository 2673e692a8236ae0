"""Files that appear whole: the one atomic writer, JSON and CSV through it, JSON-safe values.

Everything the project writes goes through ``atomic_write`` (a reader never sees half a file);
``jsonable`` makes figures standard JSON.
"""

from __future__ import annotations

import json
import math
import os
import tempfile


def atomic_write(path: str, write) -> None:
  """Calls ``write(f)`` on a binary temporary file in ``path``'s folder, then renames it there.

  A killed writer never leaves half a file under the final name, and readers see the old file
  or the new one. The temporary name keeps ``path``'s ending and starts with ``.tmp-``.
  """
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
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

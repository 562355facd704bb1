"""Write a file so that a reader, or the next run after a kill, sees the old file or the new one,
never half of one: write a temporary file in the same folder, flush it to disk, rename it over.

The temporary name is hidden and carries the pid (`.history.json.tmp1234`), so two writers never
share one; a process killed while writing leaves only such a file behind, never a torn target.
"""

import contextlib
import os
import pathlib


@contextlib.contextmanager
def replacing(path):
  """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())  # the data is on disk before the name points at it
    os.replace(tmp, path)   # atomic within one filesystem
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(path, text: str) -> pathlib.Path:
  path = pathlib.Path(path)
  with replacing(path) as tmp:
    tmp.write_text(text)
  return path

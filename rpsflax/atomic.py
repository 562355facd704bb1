"""Write a file so that a reader, or the next run after a kill, sees the old file or the new one,
never half of one: write a temporary file in the same folder, flush it to disk, rename it over.

The temporary name is hidden and carries the pid (`.history.json.tmp1234`), so two writers never
share one; a process killed while writing leaves only such a file behind, never a torn target.
"""

import contextlib
import os
import pathlib
import shutil

from rpsflax.errors import WriteError


def free_space(path) -> str:
  """'N MiB free on the filesystem of P' for the nearest existing folder of `path`."""
  probe = pathlib.Path(path)
  while not probe.exists() and probe != probe.parent:
    probe = probe.parent
  try:
    return f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free on the filesystem of {probe}"
  except OSError:
    return f"free space on the filesystem of {probe} unknown"


@contextlib.contextmanager
def replacing(path):
  """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`.

  A write that fails (disk full, quota, permissions) leaves `path` as it was and raises a
  WriteError naming it, the reason and the free space.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())  # the data is on disk before the name points at it
    os.replace(tmp, path)   # atomic within one filesystem
  except OSError as e:
    raise WriteError(f"cannot write {path}: {e.strerror or e} ({free_space(path.parent)}); it "
                     "is left as it was. Free some space and run the same command again.") from e
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(path, text: str) -> pathlib.Path:
  path = pathlib.Path(path)
  with replacing(path) as tmp:
    tmp.write_text(text)
  return path

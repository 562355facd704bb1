"""One training run per workdir: an exclusive `flock` on WORKDIR/.lock, held for the run's life.

The kernel drops the lock when its process ends, however it ends (SIGKILL, out of memory), so
there is never a stale lock to delete by hand. The holder writes its pid, host and start time
into the file, so a second run can say who holds it; the second run writes nothing. Only
training takes the lock: `--mode=evaluate` and `rpsflax.predict` read finished checkpoints
and never write where training does.

flock works across hosts on NFSv4 and on Lustre mounted with `-o flock`; on a filesystem without
locks (Lustre without `-o flock`, some FUSE mounts) the run warns and goes on unlocked.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys

from absl import logging

from rpsflax.errors import RunError

LOCK_FILE = ".lock"
# errno values of a filesystem that does not implement flock (the lock is not refused: it is
# not there to take).
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def _holder(path: pathlib.Path) -> str:
  try:
    info = json.loads(path.read_text() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info.get("pid"):
    return "another process (it has not written its pid yet)"
  return (f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')}"
          f" ({info.get('command', '?')})")


@contextlib.contextmanager
def hold(workdir, enabled: bool = True):
  """Hold WORKDIR/.lock for the body, or raise RunError naming the workdir and the holder.
  enabled=False (the other processes of a multi-host run, which process 0 speaks for): no-op."""
  if not enabled:
    yield
    return
  workdir = pathlib.Path(workdir)
  path = workdir / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RunError(
          f"{workdir} is in use by another training run: {_holder(path)}. Wait for it to end, "
          f"stop it, or train in another --workdir. (The lock {path} is released when that "
          "process ends, even if it is killed.)") from None
    except OSError as e:
      if e.errno not in _NO_LOCKS:
        raise
      logging.warning("cannot lock %s (%s): this filesystem does not support flock, so nothing "
                      "stops a second run on this workdir; make sure only one runs.", path, e)
      yield
      return
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the last descriptor releases the lock

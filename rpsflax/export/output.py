"""Where an export is written: checked before any work, built in a hidden folder beside it, and
renamed into place only once the artifact has passed its parity check, so a failure or a kill
leaves nothing half-written under the name the user gave (at most the hidden folder, named with
the pid, that a kill interrupted)."""

import contextlib
import os
import pathlib
import shutil

from rpsflax import atomic
from rpsflax.errors import ExportError, WriteError
from rpsflax.export import manifest


def check(output, suffix: str = "") -> pathlib.Path:
  """The output path, or ExportError naming --output: it (or its manifest) exists, its folder is
  not a folder or cannot be written, or it lacks the suffix the format needs."""
  if not str(output):
    raise ExportError("--output: name the file (or folder) to write")
  path = pathlib.Path(output).expanduser().absolute()
  if suffix and path.suffix != suffix:
    raise ExportError(f"--output={output}: this format's file must end in {suffix}")
  for p in (path, manifest.path_for(path)):
    if p.exists() or p.is_symlink():
      raise ExportError(f"--output={output}: {p} exists; remove it or name another path "
                        "(an export never overwrites)")
  probe = path.parent
  while not probe.exists():
    probe = probe.parent
  if not probe.is_dir():
    raise ExportError(f"--output={output}: {probe} is a file, not a folder")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ExportError(f"--output={output}: no permission to write in {probe}")
  return path


@contextlib.contextmanager
def staged(path: pathlib.Path):
  """Yield (artifact path, manifest path) inside a hidden folder beside `path`; `publish` them."""
  stage = path.with_name(f".{path.name}.export{os.getpid()}")
  try:
    stage.mkdir(parents=True)
  except OSError as e:
    raise WriteError(f"--output={path}: cannot create {stage}: {e.strerror or e} "
                     f"({atomic.free_space(path.parent)})") from e
  try:
    yield stage / path.name, stage / manifest.path_for(path).name
  except OSError as e:
    raise WriteError(f"--output={path}: cannot write: {e.strerror or e} "
                     f"({atomic.free_space(path.parent)}); nothing was written there") from e
  finally:
    shutil.rmtree(stage, ignore_errors=True)


def publish(staged_artifact: pathlib.Path, staged_manifest: pathlib.Path, path: pathlib.Path):
  """Rename the artifact, then its manifest, to their places (each rename is atomic)."""
  for src, dst in ((staged_artifact, path), (staged_manifest, manifest.path_for(path))):
    if dst.exists():  # appeared while we worked
      raise ExportError(f"--output={path}: {dst} appeared while exporting; nothing replaced")
    if src.is_file():
      with open(src, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)

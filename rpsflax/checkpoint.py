"""Orbax checkpoints of a run: `workdir/checkpoints/latest` (every epoch) and `.../best`.

Each checkpoint is a Composite of two items: 'state' (the TrainState pytree, StandardSave) and
'meta' (JSON: epoch, step, history so far, best validation accuracy, class names, ...).
Orbax numbers checkpoints by global step and writes each one into a temporary directory that is
renamed only when complete, so a process killed while writing leaves the previous checkpoint
intact (the unfinished directory is ignored, and removed at the next start).

Damage (a truncated or bit-flipped array file, lost metadata: a dying disk, a copy that stopped
half way) is found on restore: every save records a checksum of the state's bits in 'meta', and
a restore that fails or does not match it is "damaged". Training (`restore_for_resume`) then
renames that checkpoint aside (`latest/<step>.damaged-<time>`, never deleted) and resumes from
the previous one; evaluation and prediction (`restore`) only say which one and why. A save that
fails for lack of space (any OSError) stops the run with the path and the free space; the
checkpoints already written are untouched.

Parameters that never train (`frozen`: the paths rpsflax/optim.py labels frozen) are left out of
each checkpoint and written once per workdir, in `checkpoints/frozen/<id>/` (rpsflax/
frozen_store.py); the checkpoint's 'meta' names the store and the paths it left out, and a
restore puts them back (checked against their own checksums). Checkpoints written before that
(the whole state in each) restore as they are. Resuming with another frozen set than the
checkpoint's is a CheckpointError; a missing or damaged store is rebuilt from the configured
weights when they hold the same parameters (`restore_for_resume(frozen_from=...)`), else a
FrozenStoreError names it and the fix.

Saves are asynchronous (the device -> host copy happens before `save` returns, so the caller may
donate the state to the next step right away); `wait()` blocks until files are on disk and
`close()` is called before a run exits. The frozen store is written at the first save, or
earlier by `write_frozen(state)` (a run calls it before its first epoch, so that the first save
does not wait for it). Every process calls save/restore (Orbax coordinates
multi-host writes); restore places arrays with the shardings of the target you pass.
"""

import contextlib
import dataclasses
import datetime
import logging as pylogging
import os
import pathlib
import re
from typing import Any, Callable, Optional, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging

from rpsflax import frozen_store
from rpsflax.atomic import free_space
from rpsflax.checksums import state_digest
from rpsflax.errors import CheckpointError, WriteError
from rpsflax.sharding import abstract_like

LATEST = "latest"
BEST = "best"
DIGEST_KEY = "_digest"  # in 'meta': one checksum per state leaf, in jax.tree.leaves order
FROZEN_KEY = "_frozen"  # in 'meta': {'store': id, 'paths': [[key, ...], ...]} left out of 'state'
DAMAGED_TAG = ".damaged-"


class _Damaged(Exception):
  """A checkpoint that exists but cannot be restored as written (message: why)."""


def disk_error(error: BaseException) -> Optional[str]:
  """Why a write failed, when it is the disk's fault (an OSError, or TensorStore's report of one:
  'RESOURCE_EXHAUSTED ... No space left on device [os_error_code='28']'); else None."""
  e = error
  while e is not None:
    if isinstance(e, OSError):
      return os.strerror(e.errno) if e.errno else str(e)
    m = re.search(r"\[os_error_code='?(\d+)", str(e))
    if m:
      return os.strerror(int(m.group(1)))
    e = e.__cause__ or e.__context__
  return None


class _QuietUnretrievedDiskErrors(pylogging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' for an Orbax write task that failed
  for the disk's sake, and, once a save has (`disk_full`), for any Orbax task: the run stops with
  one WriteError (path, reason, free space), while its write tasks, and those that the
  interpreter's shutdown then refuses ('cannot schedule new futures after interpreter
  shutdown'), would each print a traceback beside it when collected."""

  disk_full = False

  def filter(self, record: pylogging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()
    if error is None or not message.startswith("Task exception was never retrieved"):
      return True
    return not (disk_error(error) is not None or (self.disk_full and "orbax" in message))


_QUIET_DISK_TASKS = _QuietUnretrievedDiskErrors()


def _manager(directory: pathlib.Path, max_to_keep: int, async_save: bool,
             read_only: bool = False) -> ocp.CheckpointManager:
  # The latest and best managers save the same step at once: without their own barrier prefix,
  # Orbax's multi-process barriers (named after the step) would pair one manager's with the other's.
  # read_only: for evaluate/predict beside a live run, whose unfinished (temporary) saves a
  # cleanup would delete.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, cleanup_tmp_directories=not read_only,
      read_only=read_only,
      enable_async_checkpointing=async_save,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=f"rpsflax_{directory.name}"))
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


class Checkpoints:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir, *, keep_latest: int = 2, async_save: bool = True,
               read_only: bool = False, frozen: Optional[Sequence[Sequence[str]]] = None):
    """frozen: the parameters that never train, as key paths (('backbone', 'block1_conv1',
    'kernel'), ...: optim.frozen_paths): saves leave them out and write them once. None (or
    empty): saves hold the whole state. Restores read either layout whatever this says."""
    root = pathlib.Path(workdir).resolve() / "checkpoints"
    self.directory = root
    pylogging.getLogger("asyncio").addFilter(_QUIET_DISK_TASKS)  # once: filters are a set
    self._latest = _manager(root / LATEST, keep_latest, async_save, read_only)
    self._best = _manager(root / BEST, 1, async_save, read_only)
    self._store = frozen_store.Store(root)
    self._frozen = [tuple(p) for p in frozen] if frozen is not None else None
    self._writing: dict = {}  # manager directory -> the step folder it was last asked to write
    self._saving: tuple = (None, None)  # ((step, id(state)), what to save) of the last save

  def _which(self, which: str) -> ocp.CheckpointManager:
    if which not in (LATEST, BEST):
      raise ValueError(f"checkpoint {which!r}: use {LATEST!r} or {BEST!r}")
    return self._latest if which == LATEST else self._best

  def latest_step(self, which: str = LATEST) -> Optional[int]:
    return self._which(which).latest_step()

  def save(self, state, meta: dict, *, which: str = LATEST) -> bool:
    """Save `state` (step taken from meta['step']) with JSON `meta`; a step already saved is kept.

    Returns True when a checkpoint was written. Re-saving an existing step happens when a resumed
    run replays an epoch whose checkpoint had been written; the replay is bit-identical, so the
    one on disk is kept.
    """
    mngr = self._which(which)
    step = int(meta["step"])
    if step in mngr.all_steps():
      return False
    if self._saving[0] != (step, id(state)):  # best, then latest, of one state: split and hash once
      extra, kept = {}, state
      if self._frozen:
        kept, frozen = _split_state(state, self._frozen)
        extra = {FROZEN_KEY: {"store": self.write_frozen(frozen),
                              "paths": [list(p) for p in self._frozen]}}
      self._saving = ((step, id(state)), (kept, {**extra, DIGEST_KEY: state_digest(kept)}))
    kept, extra = self._saving[1]
    meta = {**meta, **extra}
    with self._disk_errors(self._store.directory):  # on disk before a checkpoint that needs it
      self._store.wait()
    with self._disk_errors(mngr.directory):  # the previous asynchronous save reports here
      mngr.wait_until_finished()
    self._writing[mngr.directory] = mngr.directory / str(step)
    with self._disk_errors(mngr.directory):
      return mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(kept), meta=ocp.args.JsonSave(meta)))

  def write_frozen(self, state_or_frozen) -> Optional[str]:
    """Start writing the frozen store of `state_or_frozen` (a TrainState, or the frozen
    parameters alone), unless it is on disk; returns its id (None without frozen paths). The
    arrays are on the host when it returns; the first save waits for the files."""
    if not self._frozen:
      return None
    frozen = state_or_frozen
    if hasattr(state_or_frozen, "params"):
      _, frozen = _split_state(state_or_frozen, self._frozen)
    with self._disk_errors(self._store.directory):
      return self._store.write(frozen)

  @contextlib.contextmanager
  def _disk_errors(self, directory):
    """A write that fails for the disk's sake -> WriteError naming the step, the reason and the
    free space. An asynchronous save reports at the next save, wait or close."""
    try:
      yield
    except Exception as e:  # Orbax re-raises its writer thread's error, often as a ValueError
      why = disk_error(e)
      if why is None:
        raise
      _QUIET_DISK_TASKS.disk_full = True  # this process stops with the message below
      path = self._writing.get(directory, directory)
      kept = ", ".join(f"{w} steps {steps_on_disk(self.directory / w)}" for w in (LATEST, BEST))
      raise WriteError(
          f"cannot write checkpoint {path}: {why} ({free_space(path)}). The checkpoints already "
          f"written are kept ({kept}); free some space and run the same command again to "
          "resume.") from e

  def restore(self, target, *, which: str = LATEST, step: Optional[int] = None):
    """(state, meta) from the latest (or given) step, placed like `target`; None when there is none.

    `target` is a pytree of arrays or ShapeDtypeStructs with the structure of the saved state
    (e.g. `sharding.abstract_like(state, replicated_sharding)`); arrays come back with its
    shardings, so a checkpoint written on 8 devices restores on 1.
    """
    mngr = self._which(which)
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    try:
      return self._load(mngr, step, target)
    except _Damaged as e:
      raise CheckpointError(
          f"checkpoint {mngr.directory / str(step)} is damaged: {e}. "
          "The files are left as they are; train again to replace it"
          + (", or predict from the latest one (rpsflax.predict --checkpoint=latest)."
             if which == BEST else ".")) from e

  def restore_for_resume(self, target, frozen_from: Optional[Callable[[], Any]] = None):
    """(state, meta) of the newest latest checkpoint that restores, or None when there is none.

    A damaged one is logged (which and why), renamed aside to `<step>.damaged-<UTC time>` and the
    previous one tried. When none restores, nothing is renamed and a CheckpointError says how to
    start fresh. A checkpoint written with other frozen parameters than this one's `frozen` is
    a CheckpointError (config.trainable or lr_groups changed). When the frozen store it needs
    is missing or damaged, `frozen_from()` (the run's initial state: its configured weights) is
    asked for them: the same parameters (the same store id) rebuild the store, else the
    FrozenStoreError stands.
    """
    try:
      return self._resume(target)
    except frozen_store.FrozenStoreError as e:
      if frozen_from is None or not self._frozen:
        raise
      logging.warning("%s\nRebuilding them from the configured weights.", e)
      _, frozen = _split_state(frozen_from(), self._frozen)
      if frozen_store.manifest(frozen)["id"] != e.store_id:
        raise frozen_store.FrozenStoreError(
            f"{e}\nThe configured weights hold other frozen parameters, so they cannot rebuild "
            "them.", e.store_id) from e
      self.write_frozen(frozen)
      with self._disk_errors(self._store.directory):
        self._store.wait()
      return self._resume(target)

  def _resume(self, target):
    mngr = self._latest
    steps = sorted(mngr.all_steps(), reverse=True)
    damaged = []
    for step in steps:
      try:
        restored = self._load(mngr, step, target)
      except _Damaged as e:
        damaged.append((step, str(e)))
        logging.warning("checkpoint %s is damaged: %s", mngr.directory / str(step), e)
        continue
      for bad, _ in damaged:
        self._set_aside(mngr, bad)
      return restored
    if not damaged:
      return None
    lines = "\n".join(f"  {mngr.directory / str(s)}: {why}" for s, why in damaged)
    raise CheckpointError(
        f"none of the checkpoints in {mngr.directory} can be restored:\n{lines}\nNothing was "
        f"changed. To start fresh, move them away (mv {self.directory} "
        f"{self.directory}.damaged) or use a new --workdir.")

  def _set_aside(self, mngr, step: int) -> None:
    path = mngr.directory / str(step)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{step}{DAMAGED_TAG}{stamp}")
    if jax.process_index() == 0:  # one rename on shared storage; every process reloads
      path.rename(aside)
    mngr.reload()
    logging.warning("renamed the damaged checkpoint %s to %s (kept, not deleted); resuming from "
                    "the one before it", path, aside.name)

  def _load(self, mngr, step: int, target):
    """(state, meta) of one step; CheckpointError when it does not fit `target` (or this run's
    frozen set), _Damaged when it cannot be read as written, FrozenStoreError when the frozen
    parameters it left out are missing or damaged."""
    path = mngr.directory / str(step)
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else abstract_like(x), target)
    try:
      meta = dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise plain Exception on bad data)
      raise _Damaged(f"cannot be read ({_first_line(e)})") from e
    ref = meta.pop(FROZEN_KEY, None)
    if ref is not None:  # the frozen parameters are in the store, not here
      paths = [tuple(p) for p in ref["paths"]]
      self._check_frozen_set(path, paths)
      try:
        abstract, frozen_abstract = _split_state(abstract, paths)
      except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this config ({e}): use a fresh "
                              "--workdir, or the config it was trained with (its config.json)."
                              ) from e
    abstract, rebuild = _older_layout(path / "state", abstract)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise plain Exception on bad data)
      saved = _saved_shapes(path / "state")
      if saved is not None and saved != _shapes(abstract):
        raise CheckpointError(
            f"checkpoint {path} does not fit this config (model, head or trainable patterns "
            f"changed?): {_first_line(e)}\nUse a fresh --workdir, or the config it was trained "
            "with (its config.json).") from e
      raise _Damaged(f"cannot be read ({_first_line(e)})") from e
    state = rebuild(restored.state)
    digest = meta.pop(DIGEST_KEY, None)
    if digest is not None and digest != state_digest(state):
      raise _Damaged("its arrays do not match the checksum saved with them (bit rot, or a copy "
                     "that changed them)")
    if ref is not None:
      state = _merge_state(state, self._store.read(ref["store"], frozen_abstract))
    return state, meta

  def _check_frozen_set(self, path, paths) -> None:
    """CheckpointError when this run freezes other parameters than the checkpoint's run did
    (resuming would train, or freeze, what the saved optimizer state does not describe)."""
    if self._frozen is None or set(paths) == set(self._frozen):
      return
    there, here = set(paths), set(self._frozen)
    example = "/".join(sorted(there ^ here)[0])
    raise CheckpointError(
        f"checkpoint {path} was written by a run that froze other parameters than this config "
        f"does ({len(there)} frozen there, {len(here)} here; {example} differs): "
        "config.trainable or config.lr_groups changed. Resume with the config it was trained "
        f"with (its config.json), or use a fresh --workdir (--config.init_from="
        f"{self.directory.parent} starts from its trained parameters).")

  def restore_meta(self, *, which: str = LATEST, step: Optional[int] = None) -> Optional[dict]:
    """The JSON metadata alone (epoch, class names, history), without reading arrays."""
    mngr = self._which(which)
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = dict(restored.meta)
    meta.pop(DIGEST_KEY, None)
    meta.pop(FROZEN_KEY, None)
    return meta

  def wait(self) -> None:
    """Block until pending asynchronous saves are on disk."""
    with self._disk_errors(self._store.directory):
      self._store.wait()
    for mngr in (self._latest, self._best):
      with self._disk_errors(mngr.directory):
        mngr.wait_until_finished()

  def close(self) -> None:
    with self._disk_errors(self._store.directory):
      self._store.close()
    for mngr in (self._latest, self._best):
      with self._disk_errors(mngr.directory):
        mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _split_state(state, paths):
  """(state without the parameters at `paths`, those parameters) of a TrainState (or its
  abstract twin)."""
  kept, frozen = frozen_store.split(state.params, paths)
  return state.replace(params=kept), frozen


def _merge_state(state, frozen):
  return state.replace(params=frozen_store.merge(state.params, frozen))


def _older_layout(path: pathlib.Path, abstract):
  """(restore target, rebuild) for a checkpoint written before a state field existed.

  A TrainState field that holds no arrays for this model (`batch_stats` of a model without
  BatchNorm, added 2026-12) is missing from checkpoints written before it: restore the fields
  on disk, then put the empty one back, so an older run resumes instead of failing.
  """
  if not dataclasses.is_dataclass(abstract):
    return abstract, lambda state: state
  try:
    saved = ocp.StandardCheckpointHandler().metadata(path).tree
  except Exception:  # noqa: BLE001 (unreadable metadata: the restore itself says why)
    return abstract, lambda state: state
  fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
  absent = {k: v for k, v in fields.items()
            if isinstance(saved, dict) and k not in saved and not jax.tree.leaves(v)}
  if not absent:
    return abstract, lambda state: state
  on_disk = {k: v for k, v in fields.items() if k not in absent}
  return on_disk, lambda state: type(abstract)(**state, **absent)


def _shapes(tree) -> list:
  return sorted((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


def _saved_shapes(path: pathlib.Path) -> Optional[list]:
  """(shape, dtype) of every array a state item holds, from its metadata; None if unreadable."""
  try:
    return _shapes(ocp.StandardCheckpointHandler().metadata(path).tree)
  except Exception:  # noqa: BLE001 (damaged metadata: the caller says so)
    return None


def _first_line(e: BaseException) -> str:
  """The innermost cause's first line (TensorStore's own reason, e.g. OUT_OF_RANGE), short."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip() or type(e).__name__
  return f"{type(e).__name__}: " + text.splitlines()[0].split(" [tensorstore_spec=")[0][:300]


def restore_latest(workdir, target) -> Optional[tuple[Any, dict]]:
  """(state, meta) of `workdir/checkpoints/latest`, or None. meta['epoch'] is the finished epoch."""
  if not has_checkpoint(workdir, LATEST):
    return None
  with Checkpoints(workdir, read_only=True) as ckpts:
    return ckpts.restore(target, which=LATEST)


def restore_best(workdir, target) -> Optional[tuple[Any, dict]]:
  """(state, meta) of `workdir/checkpoints/best` (highest validation accuracy), or None."""
  if not has_checkpoint(workdir, BEST):
    return None
  with Checkpoints(workdir, read_only=True) as ckpts:
    return ckpts.restore(target, which=BEST)


def steps_on_disk(directory) -> list[int]:
  """The finished checkpoints in a manager's folder (temporary and damaged ones are not)."""
  directory = pathlib.Path(directory)
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def has_checkpoint(workdir, which: str = LATEST) -> bool:
  path = pathlib.Path(workdir) / "checkpoints" / which
  return path.is_dir() and any(p.name.isdigit() for p in path.iterdir())

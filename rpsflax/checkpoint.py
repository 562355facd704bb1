"""Orbax checkpoints of a run: `workdir/checkpoints/latest` (every epoch) and `.../best`.

Each checkpoint is a Composite of two items: 'state' (the TrainState pytree, StandardSave) and
'meta' (JSON: epoch, step, history so far, best validation accuracy, class names, ...).
Orbax numbers checkpoints by global step and writes each one into a temporary directory that is
renamed only when complete, so a process killed while writing leaves the previous checkpoint
intact (the unfinished directory is ignored, and removed at the next start).

Saves are asynchronous (the device -> host copy happens before `save` returns, so the caller may
donate the state to the next step right away); `wait()` blocks until files are on disk and
`close()` is called before a run exits. Every process calls save/restore (Orbax coordinates
multi-host writes); restore places arrays with the shardings of the target you pass.
"""

import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from rpsflax.errors import CheckpointError

LATEST = "latest"
BEST = "best"



def _manager(directory: pathlib.Path, max_to_keep: int, async_save: bool) -> ocp.CheckpointManager:
  # The latest and best managers save the same step at once: without their own barrier prefix,
  # Orbax's multi-process barriers (named after the step) would pair one manager's with the other's.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=f"rpsflax_{directory.name}"))
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def abstract_like(tree, sharding=None):
  """ShapeDtypeStructs (with `sharding`, or each leaf's own) to restore into."""
  def leaf(x):
    s = sharding if sharding is not None else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(leaf, tree)


class Checkpoints:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir, *, keep_latest: int = 2, async_save: bool = True):
    root = pathlib.Path(workdir).resolve() / "checkpoints"
    self.directory = root
    self._latest = _manager(root / LATEST, keep_latest, async_save)
    self._best = _manager(root / BEST, 1, async_save)

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
    return mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))))

  def restore(self, target, *, which: str = LATEST, step: Optional[int] = None):
    """(state, meta) from the latest (or given) step, placed like `target`; None when there is none.

    `target` is a pytree of arrays or ShapeDtypeStructs with the structure of the saved state
    (e.g. `abstract_like(state, replicated_sharding)`); arrays come back with its shardings, so
    a checkpoint written on 8 devices restores on 1.
    """
    mngr = self._which(which)
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else abstract_like(x), target)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"checkpoint {mngr.directory / str(step)} does not fit this config (model, head or "
          f"trainable patterns changed?): {e}\nUse a fresh --workdir, or the config it was "
          "trained with (its config.json).") from e
    return restored.state, dict(restored.meta)

  def restore_meta(self, *, which: str = LATEST, step: Optional[int] = None) -> Optional[dict]:
    """The JSON metadata alone (epoch, class names, history), without reading arrays."""
    mngr = self._which(which)
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def wait(self) -> None:
    """Block until pending asynchronous saves are on disk."""
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def restore_latest(workdir, target) -> Optional[tuple[Any, dict]]:
  """(state, meta) of `workdir/checkpoints/latest`, or None. meta['epoch'] is the finished epoch."""
  if not has_checkpoint(workdir, LATEST):
    return None
  with Checkpoints(workdir) as ckpts:
    return ckpts.restore(target, which=LATEST)


def restore_best(workdir, target) -> Optional[tuple[Any, dict]]:
  """(state, meta) of `workdir/checkpoints/best` (highest validation accuracy), or None."""
  if not has_checkpoint(workdir, BEST):
    return None
  with Checkpoints(workdir) as ckpts:
    return ckpts.restore(target, which=BEST)


def has_checkpoint(workdir, which: str = LATEST) -> bool:
  path = pathlib.Path(workdir) / "checkpoints" / which
  return path.is_dir() and any(p.name.isdigit() for p in path.iterdir())

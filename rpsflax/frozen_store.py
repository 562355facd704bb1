"""Parameters that never train, written once per workdir: `checkpoints/frozen/<id>/`.

A frozen backbone is the same in every checkpoint of a run (VGG16's conv stack: 58 MB in each
latest and best one), so checkpoints leave out the parameters that rpsflax/optim.py labels
frozen and the workdir holds them once, here: an Orbax checkpoint of two items, 'params' (the
arrays, nested as in the model) and 'manifest' (JSON: each array's path, shape, dtype and
checksum from rpsflax/checksums.py, and the id).

<id> is a digest of the manifest, so it names the contents: a checkpoint's meta records the id
it needs and can only be completed with those very arrays; the same weights give the same id,
so a lost store can be rebuilt from config.weights (rpsflax/checkpoint.py, restore_for_resume),
and other weights go to another store beside it. Reading checks every array against the
manifest: a store that is missing, unreadable or changed is a FrozenStoreError naming the folder
and the fix, never other weights.
"""

import datetime
import hashlib
import json
import pathlib
from typing import Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from rpsflax.checksums import state_digest
from rpsflax.errors import CheckpointError

DIRECTORY = "frozen"  # under the workdir's checkpoints/
DAMAGED_TAG = ".damaged-"
FORMAT = 1


class FrozenStoreError(CheckpointError):
  """The store a checkpoint needs is missing or damaged; `store_id` says which."""

  def __init__(self, message: str, store_id: str):
    super().__init__(message)
    self.store_id = store_id


def split(params, paths) -> tuple[dict, dict]:
  """(kept, frozen): `params` without, and only with, the leaves at `paths` (tuples of keys)."""
  flat = traverse_util.flatten_dict(params)
  missing = [p for p in paths if p not in flat]
  if missing:
    raise ValueError(f"no parameter {'/'.join(map(str, missing[0]))} to leave out of the "
                     "checkpoint")
  frozen = set(paths)
  return (traverse_util.unflatten_dict({k: v for k, v in flat.items() if k not in frozen}),
          traverse_util.unflatten_dict({k: flat[k] for k in paths}))


def merge(kept, frozen) -> dict:
  """The inverse of `split`: one nested parameter tree."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(kept),
                                       **traverse_util.flatten_dict(frozen)})


def _layout(tree) -> list[dict]:
  """[{path, shape, dtype}] of every array (or ShapeDtypeStruct), in jax.tree.leaves order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [{"path": [str(getattr(k, "key", k)) for k in path], "shape": list(x.shape),
           "dtype": str(x.dtype)} for path, x in leaves]


def manifest(frozen) -> dict:
  """What a store of `frozen` holds, with its checksums and the id they make."""
  arrays = [{**entry, "digest": d} for entry, d in zip(_layout(frozen), state_digest(frozen),
                                                       strict=True)]
  body = {"format": FORMAT, "arrays": arrays}
  return {**body, "id": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]}


class Store:
  """The frozen-parameter stores of one `checkpoints/` folder."""

  def __init__(self, checkpoints_dir):
    self.directory = pathlib.Path(checkpoints_dir) / DIRECTORY
    self._writer: Optional[ocp.AsyncCheckpointer] = None
    self._good: set = set()  # ids written or checked by this process

  def path(self, store_id: str) -> pathlib.Path:
    return self.directory / store_id

  def write(self, frozen) -> str:
    """Put the store of `frozen` on disk once; returns its id. Asynchronous: the arrays are
    copied to the host before it returns (so they may be donated), `wait` for the files. A
    damaged store of the same id is renamed aside (kept) and written again."""
    m = manifest(frozen)
    sid = m["id"]
    if sid in self._good:
      return sid
    path = self.path(sid)
    if path.exists():
      try:
        self.read(sid, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                   sharding=x.sharding), frozen))
        return sid
      except FrozenStoreError as e:
        self._set_aside(path, str(e))
    self.wait()
    if jax.process_index() == 0:
      self.directory.mkdir(parents=True, exist_ok=True)
    if self._writer is None:
      self._writer = ocp.AsyncCheckpointer(
          ocp.CompositeCheckpointHandler(),
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix="rpsflax_frozen"))
    self._writer.save(path, args=ocp.args.Composite(params=ocp.args.StandardSave(frozen),
                                                    manifest=ocp.args.JsonSave(m)))
    logging.info("writing the frozen parameters once, to %s (%d arrays); checkpoints leave "
                 "them out", path, len(m["arrays"]))
    self._good.add(sid)
    return sid

  def read(self, store_id: str, abstract) -> dict:
    """The arrays of store `store_id`, placed as `abstract` (ShapeDtypeStructs with shardings)
    and checked against the manifest; FrozenStoreError when missing or damaged,
    CheckpointError when it holds other shapes than `abstract` (another config)."""
    path = self.path(store_id)
    if not (path / "manifest").exists():
      raise self._error(store_id, "are missing")
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
      m = dict(checkpointer.restore(path, args=ocp.args.Composite(
          manifest=ocp.args.JsonRestore())).manifest)
      layout = [{k: a[k] for k in ("path", "shape", "dtype")} for a in m["arrays"]]
    except Exception as e:  # noqa: BLE001 (Orbax raises plain Exceptions on bad files)
      raise self._error(store_id, f"cannot be read (manifest: {type(e).__name__}: {e})") from e
    if m.get("id") != store_id:
      raise self._error(store_id, f"hold a manifest of store {m.get('id')!r}")
    if layout != _layout(abstract):
      raise CheckpointError(
          f"the frozen parameters {path} do not fit this config (model or trainable patterns "
          "changed?). Use a fresh --workdir, or the config it was trained with (its config.json).")
    try:
      params = checkpointer.restore(path, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract))).params
    except Exception as e:  # noqa: BLE001
      raise self._error(store_id, f"cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]})") from e
    if manifest(params) != m:
      raise self._error(store_id, "do not match the checksums saved with them (bit rot, or a "
                                  "copy that changed them)")
    self._good.add(store_id)
    return params

  def _error(self, store_id: str, why: str) -> FrozenStoreError:
    path = self.path(store_id)
    return FrozenStoreError(
        f"the frozen parameters {path}, written once for every checkpoint of this workdir, "
        f"{why}. Nothing was changed. Run this workdir's training command again: it rebuilds "
        f"them from config.weights when those hold the same parameters; or restore {path} "
        "from a copy of the workdir.", store_id)

  def _set_aside(self, path: pathlib.Path, why: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}{DAMAGED_TAG}{stamp}")
    if jax.process_index() == 0:
      path.rename(aside)
    logging.warning("%s\nRenamed it to %s (kept, not deleted); writing it again.", why,
                    aside.name)

  def wait(self) -> None:
    """Block until a store being written is on disk."""
    if self._writer is not None:
      self._writer.wait_until_finished()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

"""Converted folders (`weights/<name>/`): an Orbax checkpoint of the variables in `params/`
plus `manifest.json` (source file and md5, Keras layer -> Flax path, shapes), written last: a
folder without it is an unfinished conversion and is refused.
"""

import json
import os
import pathlib
import re
import shutil
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from rpsflax import atomic
from rpsflax.errors import WeightsError
from rpsflax.weights.convert import subtree
from rpsflax.weights.keras_files import Weights

MANIFEST = "manifest.json"
CHECKPOINT = "params"
FORMAT = "rpsflax-converted-weights/1"


def save_converted(directory, variables: Mapping, manifest: Mapping) -> pathlib.Path:
  """Write `variables` as an Orbax checkpoint in directory/params, then directory/manifest.json.

  The manifest is the completion marker: an existing one is removed first, so a conversion that
  dies half-way leaves a folder `load_converted` refuses rather than a stale-looking one.
  """
  directory = pathlib.Path(directory).expanduser().resolve()
  if directory.is_dir():
    # Only ever replace a (possibly unfinished) conversion, never someone's other files; an
    # interrupted one may leave atomic's hidden manifest or Orbax's temporary folders.
    other = sorted(e for e in os.listdir(directory)
                   if e not in (MANIFEST, CHECKPOINT) and not e.startswith(
                       (CHECKPOINT + ".", f".{MANIFEST}.tmp", MANIFEST + ".tmp")))
    if other:
      raise WeightsError(f"{directory}: exists and holds files that are not converted weights "
                         f"({', '.join(other[:5])}); choose an empty or new output folder")
  directory.mkdir(parents=True, exist_ok=True)
  (directory / MANIFEST).unlink(missing_ok=True)
  ckpt = directory / CHECKPOINT
  if ckpt.exists():
    shutil.rmtree(ckpt)
  variables = jax.tree.map(np.asarray, dict(variables))
  with _checkpointer() as checkpointer:
    checkpointer.save(ckpt, args=ocp.args.StandardSave(variables))
  flat = traverse_util.flatten_dict(variables)
  manifest = dict(manifest)
  manifest.update(
      format=FORMAT,
      checkpoint=CHECKPOINT,
      num_params=int(sum(np.size(v) for v in flat.values())),
      arrays={"/".join(p): {"shape": list(np.shape(v)), "dtype": str(v.dtype)}
              for p, v in flat.items()},
  )
  atomic.write_text(directory / MANIFEST, _dumps(manifest))
  return directory


def _checkpointer():
  """A synchronous Orbax checkpointer: a weights folder is written once, nothing to overlap."""
  return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _dumps(obj) -> str:
  """Indented JSON with shape lists kept on one line."""
  text = json.dumps(obj, indent=2)
  return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                text) + "\n"


def read_manifest(directory) -> dict:
  directory = pathlib.Path(directory)
  redo = (f"; convert again: python scripts/convert_keras_weights.py --input FILE "
          f"--output {directory}")
  if not directory.is_dir():
    raise WeightsError(f"{directory}: no such folder of converted weights{redo}")
  path = directory / MANIFEST
  if not path.is_file():
    raise WeightsError(f"{directory}: no {MANIFEST}, so this folder is not a finished conversion "
                       f"(the manifest is written last){redo}")
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise WeightsError(f"{path}: unreadable manifest ({e}){redo}") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
      manifest.get("arrays"), dict) or not isinstance(manifest.get("layers"), dict):
    raise WeightsError(f"{path}: not a manifest of format {FORMAT!r}{redo}")
  return manifest


def load_converted(directory) -> dict:
  """A folder written by `save_converted` -> variables ({'params': ...}).

  Every array the manifest lists must be restored with its shape and dtype; anything else (an
  unfinished or damaged folder) raises WeightsError and nothing is returned.
  """
  return _load_converted(directory)[0]


def _load_converted(directory) -> tuple[dict, dict]:
  directory = pathlib.Path(directory).expanduser()
  manifest = read_manifest(directory)
  redo = (f"; convert again: python scripts/convert_keras_weights.py --input "
          f"{manifest.get('source', 'FILE')} --output {directory}")
  ckpt = (directory / manifest.get("checkpoint", CHECKPOINT)).resolve()
  if not ckpt.is_dir():
    raise WeightsError(f"{directory}: the checkpoint folder {ckpt.name}/ is missing{redo}")
  try:
    with _checkpointer() as checkpointer:
      restored = checkpointer.restore(ckpt, args=ocp.args.StandardRestore())
  except Exception as e:  # orbax/tensorstore raise many types for damaged folders
    raise WeightsError(f"{directory}: the checkpoint in {ckpt.name}/ is incomplete or damaged "
                       f"({type(e).__name__}: {str(e)[:300]}){redo}") from e
  flat = {"/".join(p): np.asarray(v) for p, v in traverse_util.flatten_dict(restored).items()}
  problems = []
  for name, meta in manifest["arrays"].items():
    if name not in flat:
      problems.append(f"{name}: listed in the manifest, not in the checkpoint")
    elif list(flat[name].shape) != list(meta["shape"]) or str(flat[name].dtype) != meta["dtype"]:
      problems.append(f"{name}: manifest says {meta['dtype']}{tuple(meta['shape'])}, checkpoint "
                      f"holds {flat[name].dtype}{flat[name].shape}")
  problems += [f"{n}: in the checkpoint, not in the manifest" for n in flat
               if n not in manifest["arrays"]]
  if problems:
    raise WeightsError(f"{directory}: checkpoint and manifest disagree:\n  - "
                       + "\n  - ".join(problems) + redo)
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict({tuple(n.split("/")): v for n, v in flat.items()})), manifest


def _manifest_leaf(variables, path, name) -> np.ndarray:
  """The array a manifest weight name ('kernel' in params, or 'batch_stats/mean') points at."""
  collection, leaf = name.split("/") if "/" in name else ("params", name)
  value = subtree(variables, (collection,) + path + (leaf,))
  if value is None or isinstance(value, Mapping):
    raise KeyError(name)
  return np.asarray(value)


def converted_as_keras(directory) -> Weights:
  """A converted folder read back as {keras layer name: [arrays in Keras order]}."""
  variables, manifest = _load_converted(directory)
  out = {}
  for kname, entry in manifest["layers"].items():
    path = tuple(entry["flax_path"].split("/"))
    try:
      arrays = [_manifest_leaf(variables, path, n) for n in entry["weights"]]
      keras_shapes = entry.get("keras_shapes") or [a.shape for a in arrays]
      out[kname] = [a.reshape(shape) for a, shape in zip(arrays, keras_shapes, strict=True)]
    except (TypeError, KeyError, ValueError) as e:
      raise WeightsError(f"{directory}: manifest layer {kname!r} points at "
                         f"'{entry['flax_path']}', which the checkpoint lacks") from e
  return out

"""The official Keras ImageNet releases, and config.weights resolved to the weights it names.

config.weights is 'imagenet' (the release of config.model, from its registry entry: a converted
copy in weights/, Keras' cache, or a download), a folder written by
scripts/convert_keras_weights.py, a Keras file, or '' (random initialisation).
"""

import os
import pathlib
from collections.abc import Mapping
from typing import Iterable

import jax.numpy as jnp
from flax import traverse_util

from rpsflax import models
from rpsflax.errors import WeightsError
from rpsflax.models import Release, vgg
from rpsflax.weights import keras_files
from rpsflax.weights.convert import COLLECTIONS, LayerMap, default_optional, match_weights, shapes_of
from rpsflax.weights.converted import CHECKPOINT, converted_as_keras, read_manifest
from rpsflax.weights.keras_files import Weights, file_md5, read_keras_weights, sniff_keras_file

# The repository's weights/ folder: where the converter writes by default.
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "weights"


def _keras_cache_candidates(fname: str) -> list[pathlib.Path]:
  home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
  return [pathlib.Path(home) / "models" / fname, pathlib.Path("/tmp/.keras/models") / fname]


def release(backbone: str = vgg.SPEC.name, include_top: bool = False, image_size: int = 224,
            alpha: float = 1.0) -> Release:
  """The official Keras file `keras.applications.<backbone>(weights='imagenet')` would load, as
  its registry entry names it (MobileNetV2's depends on the width and input size)."""
  spec = models.REGISTRY.get(backbone)
  if spec is None or spec.release is None:
    raise WeightsError(f"config.model.name={backbone!r} has no official ImageNet weights: set "
                       "config.weights to a Keras file or converted folder, or '' (random init)")
  return spec.release(bool(include_top), image_size, alpha)


def release_for_config(config) -> Release:
  """The notop release for config.model (name, alpha) at config.data.image_size."""
  return release(config.model.name, False, config.data.image_size,
                 config.model.alpha)


def imagenet_release(config) -> Release | None:
  """What config.weights='imagenet' means for config.model: its notop release (None for a model
  without one, where 'imagenet' then means VGG16's, as before)."""
  if models.get_spec(config.model.name).release is None:
    return None
  return release_for_config(config)


def download_vgg16(include_top: bool = False) -> str:
  """Path of the official Keras VGG16 ImageNet file (see `download_release`)."""
  return download_release(release(vgg.SPEC.name, include_top))


def download_release(rel: Release) -> str:
  """Path of an official Keras ImageNet file, downloading it (md5-checked) when needed.

  A copy already in Keras' cache (~/.keras/models, $KERAS_HOME) with the right md5 (or, for a
  release without one, the right name) is used without importing Keras; otherwise
  `keras.utils.get_file` fetches it.
  """
  fname, url, md5 = rel.fname, rel.url, rel.md5
  for cached in _keras_cache_candidates(fname):
    if cached.is_file() and (md5 is None or file_md5(cached) == md5):
      return str(cached)
  top = " --include-top" if rel.include_top else ""
  checked = f"md5 {md5}" if md5 else "Keras publishes no md5 for it"
  how = (f"Offline? Fetch {fname} ({checked}) from {url} on a machine with internet, then "
         f"either convert it: python scripts/convert_keras_weights.py --input /path/to/{fname} "
         f"--model {rel.backbone}{top}, or train with it directly: "
         f"--config.weights=/path/to/{fname} (or with the converted folder: "
         f"--config.weights=weights/{rel.folder}).")
  keras = keras_files.import_keras(f"download {fname}")
  try:
    return keras.utils.get_file(fname, url, cache_subdir="models", file_hash=md5)
  except Exception as e:  # get_file raises bare Exception on URL errors
    app = models.get_spec(rel.backbone).keras_application
    raise WeightsError(f"could not download the Keras {app} ImageNet weights {fname} from {url} "
                       f"({type(e).__name__}: {e}). {how}") from e


def _imagenet_folder(rel: Release) -> pathlib.Path | None:
  """weights/<rel.folder> when it holds a finished conversion of that official file (its md5,
  or its file name for a release without md5)."""
  folder = WEIGHTS_DIR / rel.folder
  try:
    manifest = read_manifest(folder)
  except WeightsError:
    return None
  if rel.md5 is not None:
    return folder if manifest.get("source_md5") == rel.md5 else None
  return folder if os.path.basename(str(manifest.get("source", ""))) == rel.fname else None


def _unknown_spec(spec) -> WeightsError:
  return WeightsError(
      f"config.weights={spec!r}: no such file or folder. Use 'imagenet' (the Keras "
      "release of config.model.name, downloaded once), a folder written by "
      "scripts/convert_keras_weights.py (e.g. weights/vgg16_notop), a Keras .h5 / .weights.h5 / "
      ".keras file, or '' to keep the random initialisation.")


def check_spec(spec: str, rel: Release | None = None) -> str:
  """Resolve config.weights in seconds, before any training work; returns its source ('' for
  none). 'imagenet' means `rel` (`release_for_config(config)`; default: VGG16 without top).
  Raises WeightsError for a missing path, a file that is no Keras weights file, an
  unfinished converted folder, or an 'imagenet' download that fails. Shapes are checked at
  load time, against the model."""
  spec = str(spec or "").strip()
  if not spec:
    return ""
  if spec == "imagenet":
    rel = rel or release()
    folder = _imagenet_folder(rel)
    return str(folder) if folder is not None else download_release(rel)
  path = pathlib.Path(spec).expanduser()
  if path.is_dir():
    manifest = read_manifest(path)
    if not (path / manifest.get("checkpoint", CHECKPOINT)).is_dir():
      raise WeightsError(f"{path}: the checkpoint folder {CHECKPOINT}/ is missing; convert again")
    return str(path)
  if path.is_file():
    sniff_keras_file(path)
    return str(path)
  raise _unknown_spec(spec)


def weights_for_spec(spec: str, rel: Release | None = None) -> tuple[Weights, str]:
  """config.weights -> ({keras layer: arrays}, description of the source); ({}, '') for ''.
  'imagenet' means `rel` (default: VGG16 without top)."""
  spec = str(spec or "").strip()
  if not spec:
    return {}, ""
  if spec == "imagenet":
    rel = rel or release()
    folder = _imagenet_folder(rel)
    if folder is not None:
      return converted_as_keras(folder), str(folder)
    path = download_release(rel)
    return read_keras_weights(path), path
  path = pathlib.Path(spec).expanduser()
  if path.is_dir():
    return converted_as_keras(path), str(path)
  if path.is_file():
    return read_keras_weights(path), str(path)
  raise _unknown_spec(spec)


def load_for_model(spec: str, params: Mapping, layer_map: LayerMap, *,
                   optional: Iterable[str] | None = None, ignore: Iterable[str] = (),
                   rel: Release | None = None) -> dict:
  """Fill `params` (a model's initialised params) with the weights named by config.weights.

  spec: 'imagenet' (the release `rel`, default VGG16 notop), a converted folder, a Keras file,
  or '' (params returned unchanged). Mapped layers are replaced after their names and shapes are
  checked; everything else (e.g. a head absent from the file) stays as initialised. `optional`
  defaults to the head layers. For a model with BatchNorm use `load_variables_for_model`.
  """
  spec = str(spec or "").strip()
  if not spec:
    return params
  return load_variables_for_model(spec, {"params": params}, layer_map, optional=optional,
                                  ignore=ignore, rel=rel)["params"]


def load_variables_for_model(spec: str, variables: Mapping, layer_map: LayerMap, *,
                             optional: Iterable[str] | None = None, ignore: Iterable[str] = (),
                             rel: Release | None = None) -> dict:
  """`load_for_model` for a variables tree {'params', 'batch_stats'}: a Keras BatchNorm's gamma
  and beta fill params, its moving mean and variance batch_stats."""
  spec = str(spec or "").strip()
  if not spec:
    return variables
  weights, source = weights_for_spec(spec, rel)
  if optional is None:
    optional = default_optional(layer_map)
  variables = {k: v for k, v in variables.items() if k in COLLECTIONS}
  loaded, _ = match_weights(weights, shapes_of(variables), layer_map, source=source,
                            optional=optional, ignore=ignore)
  flat = traverse_util.flatten_dict(variables)
  for path, value in loaded.items():
    flat[path] = jnp.asarray(value)
  return traverse_util.unflatten_dict(flat)

"""Keras weight files -> Flax parameters, matched by Keras layer name and checked against the module.

Keras and Flax share NHWC, HWIO conv kernels and (in, out) dense kernels, so converting is
renaming: every Keras layer is matched BY NAME, through a layer map {keras layer name: Flax module
path}, to a Flax module whose shapes come from the module's own init. Nothing is matched by position.

Keras layouts read:
- legacy HDF5 (the released VGG16 files, Keras 2 `save_weights('x.h5')`, full-model `.h5` saves
  whose weights sit under `model_weights/`): root attribute `layer_names`; each layer group has an
  attribute `weight_names` in the layer's weight order (kernel, then bias).
- Keras 3 `.weights.h5`: groups `layers/<key>/vars/0, 1, ...` where <key> is the class-based
  path (`conv2d_3`); the layer's own name is the `name` attribute of its `vars` group.
- `.keras` zip: opened with `keras.saving.load_model(safe_mode=True, compile=False)`, so nothing
  is unpickled from a user file, then read layer by layer.

A converted folder (`weights/<name>/`) is an Orbax checkpoint of the variables in `params/` plus
`manifest.json` (source file and md5, Keras layer -> Flax path, shapes), written last: a folder
without it is an unfinished conversion and is refused.

No TensorFlow at import time: Keras is imported only to download a release file or read `.keras`.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import zipfile
from collections.abc import Mapping
from typing import Iterable, NamedTuple

import h5py
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from rpsflax import models
from rpsflax.models import build_model, keras_layer_map
from rpsflax.errors import WeightsError



# Official Keras release files, as in keras/src/applications/vgg16.py (URL, md5).
_RELEASE_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
VGG16_RELEASES = {
    False: ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            _RELEASE_BASE + "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "6d6bbae143d832006294945121d1f1fc"),
    True: ("vgg16_weights_tf_dim_ordering_tf_kernels.h5",
           _RELEASE_BASE + "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
           "64373286793e3c8b2b4e3219cbf3544b"),
}

# ResNet50 and MobileNetV2, as in keras/src/applications/resnet.py and mobilenet_v2.py.
RESNET_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
RESNET50_FILES = {False: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                  True: "resnet50_weights_tf_dim_ordering_tf_kernels.h5"}
RESNET50_MD5 = {False: "4d473c1dd8becc155b73f8504c6f6626", True: "2cb95161c43110f7111970584f804107"}
MOBILENET_V2_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)
MOBILENET_V2_RELEASE_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# The repository's weights/ folder: where the converter writes by default.
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"
MANIFEST = "manifest.json"
CHECKPOINT = "params"
FORMAT = "rpsflax-converted-weights/1"

# Keras lists a layer's weights kernel (or gamma) first, then bias (beta), then a BatchNorm's
# moving mean and variance; Flax names them, in 'params' and 'batch_stats'.
COLLECTIONS = ("params", "batch_stats")
_KERAS_ORDER = {("params", "kernel"): 0, ("params", "embedding"): 0, ("params", "scale"): 0,
                ("params", "bias"): 1, ("batch_stats", "mean"): 2, ("batch_stats", "var"): 3}
# Top layers that keras-applications (the Keras 2 code the release files were made with) named
# differently from Keras 3: ResNet50's 'probs' and MobileNetV2's 'Logits' are 'predictions' now.
_KERAS_ALIASES = {"probs": "predictions", "Logits": "predictions"}

Weights = dict[str, list[np.ndarray]]
LayerMap = Mapping[str, tuple[str, ...]]


# ---------------------------------------------------------------------------------------------
# Reading Keras files.

def read_keras_weights(path) -> Weights:
  """{keras layer name: [arrays in Keras order]} for every layer of the file that has weights."""
  return _read_keras_file(path)[0]


def _read_keras_file(path) -> tuple[Weights, str]:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise WeightsError(f"{path}: no such file (expected a Keras weights file: a legacy .h5, "
                       "a Keras 3 .weights.h5 or a .keras model)")
  if os.path.isdir(path):
    raise WeightsError(f"{path} is a folder, not a Keras weights file; a folder written by "
                       "scripts/convert_keras_weights.py loads with load_converted()")
  if h5py.is_hdf5(path):
    return _read_h5(path)
  if zipfile.is_zipfile(path):
    return _read_keras_zip(path), "keras-zip"
  with open(path, "rb") as f:
    head = f.read(16)
  raise WeightsError(
      f"{path}: not a Keras weights file: expected HDF5 (the legacy release .h5 such as "
      f"{VGG16_RELEASES[False][0]}, or a Keras 3 .weights.h5) or a .keras zip archive, but it is "
      f"neither ({os.path.getsize(path)} bytes, starting {head!r}). A truncated download or "
      "an HTML error page saved under the file's name looks like this.")


def _read_h5(path) -> tuple[Weights, str]:
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise WeightsError(f"{path}: HDF5 file that cannot be opened ({e}); is it truncated?") from e
  with f:
    root = f
    if not _has_attr_list(f, "layer_names") and "model_weights" in f:
      root = f["model_weights"]  # a legacy full-model save (model.save('x.h5'))
    if _has_attr_list(root, "layer_names"):
      return _read_legacy(root, path), "legacy-h5"
    if "layers" in f or "vars" in f:
      return _read_keras3(f, path), "keras3-weights-h5"
    raise WeightsError(
        f"{path}: HDF5 file without Keras weights: no root attribute 'layer_names' (legacy "
        "layout) and no 'layers' group (Keras 3 .weights.h5); top-level entries: "
        f"{sorted(f)[:10]}")


def _decode(x) -> str:
  return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _has_attr_list(group, name) -> bool:
  return name in group.attrs or f"{name}0" in group.attrs


def _attr_list(group, name) -> list[str]:
  """A list-of-strings attribute; Keras splits long ones into name0, name1, ..."""
  if name in group.attrs:
    return [_decode(v) for v in np.atleast_1d(group.attrs[name])]
  out, i = [], 0
  while f"{name}{i}" in group.attrs:
    out += [_decode(v) for v in np.atleast_1d(group.attrs[f"{name}{i}"])]
    i += 1
  return out


def _dataset(ds) -> np.ndarray:
  if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):  # how Keras 3 marks bf16 arrays
    return np.array(ds, dtype=ml_dtypes.bfloat16)
  return np.asarray(ds[()])


def _read_legacy(root, path) -> Weights:
  out, origin, problems = {}, {}, []
  for name in _attr_list(root, "layer_names"):
    if name not in root:
      problems.append(f"layer {name!r} is listed in 'layer_names' but has no group")
      continue
    group = root[name]
    wnames = _attr_list(group, "weight_names")
    missing = [w for w in wnames if w not in group]
    if missing:
      problems.append(f"layer {name!r}: weights {missing} are listed but missing")
      continue
    owners = _nested_owners(name, wnames) or [name] * len(wnames)
    for owner, wname in zip(owners, wnames):
      if origin.setdefault(owner, name) != name:
        problems.append(f"two layers are named {owner!r} (in groups {origin[owner]!r} and "
                        f"{name!r}); layers are matched by name, so names must be unique")
        continue
      out.setdefault(owner, []).append(_dataset(group[wname]))
  if problems:
    raise WeightsError(f"{path}: damaged legacy Keras HDF5 file:\n  - " + "\n  - ".join(problems))
  return out


def _nested_owners(name, wnames) -> list[str] | None:
  """A nested model (e.g. a VGG16 base inside a Sequential) is ONE legacy layer whose weight
  names carry the inner layers' names ('block1_conv1/kernel:0', 'vgg16/block1_conv1/kernel').
  Returns each weight's inner layer name, or None for an ordinary layer."""
  parts = [w.split("/") for w in wnames]
  if not parts or any(len(p) < 2 for p in parts):
    return None
  owners = [p[-2] for p in parts]
  if len(set(owners)) < 2 or name in owners:
    return None
  return owners


def _read_keras3(f, path) -> Weights:
  out: Weights = {}

  def add(name, arrays):
    if name in out:
      raise WeightsError(f"{path}: two layers are named {name!r}; layers are matched by name, "
                         "so names must be unique")
    out[name] = arrays

  def visit(group):
    layers = group.get("layers")
    if not isinstance(layers, h5py.Group):
      return
    for key in layers:
      sub = layers[key]
      vars_ = sub.get("vars")
      if isinstance(vars_, h5py.Group):
        name = _decode(vars_.attrs.get("name", key))
        arrays = [_dataset(vars_[k]) for k in sorted(vars_, key=_numeric_key)]
        if arrays:
          add(name, arrays)
      visit(sub)  # nested models keep their own layers/ group

  visit(f)
  top = f.get("vars")
  if isinstance(top, h5py.Group) and len(top):  # weights held by the model itself
    add(_decode(top.attrs.get("name", "model")), [_dataset(top[k]) for k in sorted(top, key=_numeric_key)])
  return out


def _numeric_key(k: str):
  return (0, int(k), "") if k.isdigit() else (1, 0, k)


def _read_keras_zip(path) -> Weights:
  with zipfile.ZipFile(path) as z:
    names = set(z.namelist())
  if "config.json" not in names:
    raise WeightsError(f"{path}: a zip archive but not a .keras model (no config.json inside)")
  if not str(path).endswith(".keras"):
    raise WeightsError(f"{path}: a .keras model archive must be named *.keras for Keras to "
                       "open it; rename it")
  keras = _import_keras(f"read the .keras file {path}")
  try:
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
  except Exception as e:  # Keras raises many types here; all mean "cannot use this file"
    raise WeightsError(
        f"{path}: Keras could not load this .keras model with safe_mode=True "
        f"({type(e).__name__}: {e}). Custom layers and lambdas are refused on purpose (nothing "
        "is unpickled from a user file): save its weights with "
        "model.save_weights('x.weights.h5') and pass that file instead.") from e
  out: Weights = {}

  def visit(layers):
    for layer in layers:
      if isinstance(layer, keras.Model):
        visit(layer.layers)
        continue
      arrays = [np.asarray(w) for w in layer.get_weights()]
      if arrays:
        if layer.name in out:
          raise WeightsError(f"{path}: two layers are named {layer.name!r}; names must be unique")
        out[layer.name] = arrays

  visit(model.layers)
  return out


def _import_keras(why: str):
  try:
    import keras  # noqa: PLC0415  (Keras and TensorFlow load only to read a .keras file)
  except ImportError as e:
    raise WeightsError(f"Keras (TensorFlow) is needed to {why} but is not installed: "
                       "pip install tensorflow, or convert the file on a machine that has it "
                       "(scripts/convert_keras_weights.py) and pass the converted folder") from e
  return keras


# ---------------------------------------------------------------------------------------------
# Matching Keras layers to Flax modules.

def _subtree(tree, path):
  for k in path:
    if not isinstance(tree, Mapping) or k not in tree:
      return None
    tree = tree[k]
  return tree


def _fmt(names, shapes) -> str:
  if names is None:
    return ", ".join(str(tuple(s)) for s in shapes) or "no weights"
  return ", ".join(f"{n} {tuple(s)}" for n, s in zip(names, shapes))


def shapes_of(tree) -> dict:
  """Nested dict of jax.ShapeDtypeStruct for a params tree of arrays or of ShapeDtypeStructs."""
  return traverse_util.unflatten_dict({p: jax.ShapeDtypeStruct(tuple(np.shape(v)), v.dtype)
                for p, v in traverse_util.flatten_dict(tree).items()})


def _as_variables(shapes) -> tuple[dict, bool]:
  """(variables tree, whether `shapes` already was one): a bare params tree (VGG16, the CNN) is
  wrapped as {'params': shapes}; a tree with only 'params' and 'batch_stats' is taken as is."""
  if isinstance(shapes, Mapping) and "params" in shapes and set(shapes) <= set(COLLECTIONS):
    return dict(shapes), True
  return {"params": shapes}, False


def _keras_leaves(variables, path):
  """[(collection, name, leaf)] of the Flax module at `path`, in Keras' weight order; None when
  the module is absent, or the names of leaves no Keras layer has."""
  leaves, unknown = [], []
  for collection in COLLECTIONS:
    module = _subtree(variables.get(collection, {}), path)
    if module is None:
      continue
    if not isinstance(module, Mapping):
      return None, [f"{collection}/{'/'.join(path)}"]
    for n, leaf in module.items():
      if (collection, n) in _KERAS_ORDER and not isinstance(leaf, Mapping):
        leaves.append((collection, n, leaf))
      else:
        unknown.append(f"{collection}/{n}")
  if not leaves and not unknown:
    return None, []
  return sorted(leaves, key=lambda t: _KERAS_ORDER[t[:2]]), unknown


def _manifest_name(collection, name) -> str:
  return name if collection == "params" else f"{collection}/{name}"


def _is_depthwise(keras_shape, flax_shape) -> bool:
  """Keras DepthwiseConv2D kernel (kh, kw, C, M), C > 1, for a Flax grouped conv kernel
  (kh, kw, 1, C * M) (feature_group_count=C). Only such a layer has this pair of shapes: an
  ordinary conv kernel has the same input depth in both frameworks."""
  return (len(keras_shape) == len(flax_shape) == 4 and keras_shape[:2] == flax_shape[:2]
          and flax_shape[2] == 1 and keras_shape[2] > 1
          and keras_shape[2] * keras_shape[3] == flax_shape[3])


def _aliased(weights: Weights, layer_map: LayerMap) -> Weights:
  """Rename a file's legacy top-layer name (_KERAS_ALIASES) to the model's, when only the legacy
  name is in the file."""
  out = dict(weights)
  for old, new in _KERAS_ALIASES.items():
    if old in out and new not in out and new in layer_map and old not in layer_map:
      out[new] = out.pop(old)
  return out


def match_weights(weights: Weights, shapes, layer_map: LayerMap, *, source: str,
                  optional: Iterable[str] = (), ignore: Iterable[str] = ()
                  ) -> tuple[dict[tuple[str, ...], np.ndarray], dict]:
  """Match Keras layers to Flax modules by name and check every shape.

  `shapes`: the Flax params tree, or variables tree {'params', 'batch_stats'} for a model with
  BatchNorm (arrays or ShapeDtypeStructs), the weights must fit.
  `layer_map`: Keras layer name -> path of the Flax module (inside each collection).
  `optional`: mapped layers the file may lack (e.g. a head). `ignore`: file layers to skip.
  Keras' weights of a layer go, in Keras' order, to kernel | scale (gamma), bias (beta) in
  'params' and mean, var (moving mean and variance) in 'batch_stats'; a depthwise kernel is
  reshaped to Flax's grouped-conv layout.
  Returns ({flax variable path, collection first: array}, manifest 'layers' entry) or raises ONE
  WeightsError listing every missing, unexpected or mis-shaped weight.
  """
  variables, _ = _as_variables(shapes)
  weights = _aliased(weights, layer_map)
  optional, ignore = set(optional), set(ignore)
  loaded, layers, problems = {}, {}, []
  for kname, path in layer_map.items():
    path = tuple(path)
    where = "/".join(path)
    leaves, unknown = _keras_leaves(variables, path)
    if leaves is None:
      if kname in weights or kname not in optional:
        problems.append(f"layer {kname!r} maps to Flax module '{where}', which this model does "
                        "not have (check the model/head settings of the config)")
      continue
    if unknown:
      problems.append(f"layer {kname!r}: Flax module '{where}' has variables {sorted(unknown)}; "
                      "only kernel/bias and BatchNorm (scale, bias, mean, var) layers convert")
      continue
    order = [_manifest_name(c, n) for c, n, _ in leaves]
    want = [tuple(leaf.shape) for _, _, leaf in leaves]
    if kname not in weights:
      if kname not in optional:
        problems.append(f"missing layer {kname!r}: the model's '{where}' expects "
                        f"{_fmt(order, want)}; the file has no layer of that name")
      continue
    got = [tuple(np.shape(w)) for w in weights[kname]]
    depthwise = [len(got) == len(want) and _is_depthwise(g, w) for g, w in zip(got, want)]
    if len(got) != len(want) or any(g != w and not d for g, w, d in zip(got, want, depthwise)):
      problems.append(f"layer {kname!r} (Flax '{where}'): expected {_fmt(order, want)}; "
                      f"found {_fmt(None, got)}")
      continue
    for (collection, n, leaf), w in zip(leaves, weights[kname]):
      loaded[(collection,) + path + (n,)] = np.asarray(w).reshape(leaf.shape).astype(
          leaf.dtype, copy=False)
    # In Keras' order (kernel, bias): JSON objects keep their order in Python.
    layers[kname] = {"flax_path": where, "weights": {n: list(s) for n, s in zip(order, want)}}
    if any(depthwise):  # converted_as_keras reshapes back to Keras' layout
      layers[kname]["keras_shapes"] = [list(g) for g in got]
  for kname, arrays in weights.items():
    if kname not in layer_map and kname not in ignore:
      problems.append(f"unexpected layer {kname!r} ({_fmt(None, [np.shape(a) for a in arrays])}): "
                      "this model has no layer of that name")
  if problems:
    found = set(weights) & set(layer_map)
    hint = ("" if found else
            f"\nNone of the model's layers ({', '.join(list(layer_map)[:6])}, ...) are in the file "
            f"(it holds {', '.join(list(weights)[:6])}, ...): is it the weights of another model?")
    raise WeightsError(f"{source}: {len(problems)} problem(s) matching its Keras layers to the "
                       "Flax model by name:\n  - " + "\n  - ".join(problems) + hint)
  return loaded, layers


# ---------------------------------------------------------------------------------------------
# Targets: the Flax modules a Keras file converts into.

def vgg16_target(include_top: bool = False):
  """(param shapes, layer map, ignore) for the standalone `VGG16(include_top)`.

  Without the top, a file's fc1/fc2/predictions are ignored, so a with-top file gives a backbone.
  """
  return backbone_target("vgg16", include_top)


def backbone_target(name: str, include_top: bool = False, alpha: float = 1.0):
  """(shapes, layer map, ignore) for a standalone backbone (`models.backbone_module`).

  shapes: the params tree for VGG16, the variables tree {'params', 'batch_stats'} for the
  BatchNorm backbones. Without the top, a file's top layers are ignored.
  """
  module = models.backbone_module(name, include_top=include_top, alpha=alpha)
  size = 224 if include_top and name == "vgg16" else 32  # VGG16's fc1 fixes 224
  shapes = _init_shapes(module, size)
  layer_map = {n: (n,) for n in models.backbone_layer_names(name, include_top, alpha)}
  top = set(models.backbone_layer_names(name, True, alpha)) - set(layer_map)
  return shapes, layer_map, (() if include_top else tuple(sorted(top | set(_KERAS_ALIASES))))


def _init_shapes(module, size):
  """Shapes of `module`'s variables: the params tree alone when it has nothing else."""
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros((1, size, size, 3), jnp.float32))
  if "batch_stats" in shapes:
    return {k: shapes[k] for k in COLLECTIONS}
  return shapes["params"]


def model_target(config, image_size: int | None = None):
  """(shapes, layer map, optional layers) for `build_model(config)`: the head is optional.

  shapes: the params tree, or the variables tree {'params', 'batch_stats'} of a model with
  BatchNorm."""
  size = image_size or config.data.image_size
  shapes = _init_shapes(build_model(config), size)
  layer_map = keras_layer_map(config)
  return shapes, layer_map, default_optional(layer_map)


def default_optional(layer_map: LayerMap) -> set[str]:
  """Head layers are optional (a VGG16 notop file has none); backbone layers are required."""
  return {k for k, p in layer_map.items() if tuple(p)[:1] == ("head",)}


def convert_keras_file(path, shapes, layer_map: LayerMap, *, optional=(), ignore=(),
                       description: str = "") -> tuple[dict, dict]:
  """Keras file -> (variables {'params': ..., 'batch_stats': ... (BatchNorm models)}: numpy
  trees of the matched layers, manifest)."""
  weights, fmt = _read_keras_file(path)
  loaded, layers = match_weights(weights, shapes, layer_map, source=os.fspath(path),
                                 optional=optional, ignore=ignore)
  manifest = {
      "source": os.path.abspath(path),
      "source_md5": file_md5(path),
      "source_bytes": os.path.getsize(path),
      "source_format": fmt,
      "model": description,
      "layers": layers,
  }
  variables = traverse_util.unflatten_dict(loaded)
  return {"params": {}, **variables}, manifest


def load_keras_h5(path, include_top: bool = False) -> dict:
  """Keras VGG16 weights file -> {'params': ...} that `VGG16(include_top=...).apply` takes.

  Any layout `read_keras_weights` reads. Every layer of the model must be in the file; with
  include_top=False a file's top layers are ignored.
  """
  return load_keras_backbone(path, "vgg16", include_top)


def load_keras_backbone(path, name: str, include_top: bool = False, alpha: float = 1.0) -> dict:
  """Keras weights file of backbone `name` -> variables its standalone module's `apply` takes
  ({'params'}, plus 'batch_stats' for ResNet50 and MobileNetV2). Every layer must be there."""
  shapes, layer_map, ignore = backbone_target(name, include_top, alpha)
  variables, _ = convert_keras_file(path, shapes, layer_map, ignore=ignore)
  _check_complete(variables, _as_variables(shapes)[0], os.fspath(path))
  return jax.tree.map(jnp.asarray, variables)


def _check_complete(variables, shapes, source):
  missing = set(traverse_util.flatten_dict(shapes)) - set(traverse_util.flatten_dict(variables))
  if missing:
    raise WeightsError(f"{source}: no weights for {sorted('/'.join(p) for p in missing)}")


def file_md5(path) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Converted folders: Orbax checkpoint + manifest.json (written last).

def save_converted(directory, variables: Mapping, manifest: Mapping) -> pathlib.Path:
  """Write `variables` as an Orbax checkpoint in directory/params, then directory/manifest.json.

  The manifest is the completion marker: an existing one is removed first, so a conversion that
  dies half-way leaves a folder `load_converted` refuses rather than a stale-looking one.
  """
  directory = pathlib.Path(directory).expanduser().resolve()
  if directory.is_dir():
    # Only ever replace a (possibly unfinished) conversion, never someone's other files.
    ours = (MANIFEST, MANIFEST + ".tmp", CHECKPOINT)
    other = sorted(e for e in os.listdir(directory)
                   if e not in ours and not e.startswith(CHECKPOINT + "."))
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
  tmp = directory / (MANIFEST + ".tmp")
  tmp.write_text(_dumps(manifest))
  os.replace(tmp, directory / MANIFEST)
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
  value = _subtree(variables, (collection,) + path + (leaf,))
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


# ---------------------------------------------------------------------------------------------
# The official release and config.weights.

def _keras_cache_candidates(fname: str) -> list[pathlib.Path]:
  home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
  return [pathlib.Path(home) / "models" / fname, pathlib.Path("/tmp/.keras/models") / fname]


KERAS_NAMES = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2"}


class Release(NamedTuple):
  """One official Keras ImageNet weights file."""
  backbone: str
  include_top: bool
  fname: str
  url: str
  md5: str | None  # None where Keras' source gives none (MobileNetV2): get_file checks nothing
  folder: str      # where scripts/convert_keras_weights.py writes its conversion, in weights/


def release(backbone: str = "vgg16", include_top: bool = False, image_size: int = 224,
            alpha: float = 1.0) -> Release:
  """The official Keras file `keras.applications.<backbone>(weights='imagenet')` would load.

  MobileNetV2 has one file per width and input size (96, 128, 160, 192, 224); for any other
  size Keras loads the 224 one (with a warning), and so does this.
  """
  top = bool(include_top)
  if backbone == "vgg16":
    fname, url, md5 = VGG16_RELEASES[top]
    return Release(backbone, top, fname, url, md5, "vgg16" if top else "vgg16_notop")
  if backbone == "resnet50":
    fname = RESNET50_FILES[top]
    return Release(backbone, top, fname, RESNET_BASE + fname, RESNET50_MD5[top],
                   "resnet50" if top else "resnet50_notop")
  if backbone == "mobilenet_v2":
    rows = image_size if image_size in MOBILENET_V2_SIZES else 224
    if float(alpha) not in MOBILENET_V2_RELEASE_ALPHAS:
      raise WeightsError(f"config.model.alpha={alpha}: Keras releases MobileNetV2 ImageNet "
                         f"weights for alpha in {MOBILENET_V2_RELEASE_ALPHAS} only")
    tail = f"{float(alpha)}_{rows}" + ("" if top else "_no_top")
    fname = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{tail}.h5"
    return Release(backbone, top, fname, MOBILENET_V2_BASE + fname, None,
                   f"mobilenet_v2_{float(alpha)}_{rows}" + ("" if top else "_notop"))
  raise WeightsError(f"config.model.name={backbone!r} has no official ImageNet weights: set "
                     "config.weights to a Keras file or converted folder, or '' (random init)")


def release_for_config(config) -> Release:
  """The notop release for config.model (name, alpha) at config.data.image_size."""
  return release(config.model.name, False, config.data.image_size,
                 config.model.get("alpha", 1.0))


def imagenet_release(config) -> Release | None:
  """What config.weights='imagenet' means for config.model: its notop release (None for a model
  without one, where 'imagenet' then means VGG16's, as before)."""
  if config.model.name not in models.IMAGENET_BACKBONES:
    return None
  return release_for_config(config)


def download_vgg16(include_top: bool = False) -> str:
  """Path of the official Keras VGG16 ImageNet file (see `download_release`)."""
  return download_release(release("vgg16", include_top))


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
  model = "" if rel.backbone == "vgg16" else f" --model {rel.backbone}"
  checked = f"md5 {md5}" if md5 else "Keras publishes no md5 for it"
  how = (f"Offline? Fetch {fname} ({checked}) from {url} on a machine with internet, then either "
         f"convert it: python scripts/convert_keras_weights.py{model} --input "
         f"/path/to/{fname}{top}, or train with it directly: --config.weights=/path/to/{fname} "
         f"(or with the converted folder: --config.weights=weights/{rel.folder}).")
  keras = _import_keras(f"download {fname}")
  try:
    return keras.utils.get_file(fname, url, cache_subdir="models", file_hash=md5)
  except Exception as e:  # get_file raises bare Exception on URL errors
    raise WeightsError(f"could not download the Keras {KERAS_NAMES[rel.backbone]} ImageNet weights {fname} "
                       f"from {url} ({type(e).__name__}: {e}). {how}") from e


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
    _sniff_keras_file(path)
    return str(path)
  raise _unknown_spec(spec)


def _sniff_keras_file(path) -> str:
  """The file's Keras layout, reading no arrays (WeightsError when it is none of them)."""
  if h5py.is_hdf5(path):
    try:
      with h5py.File(path, "r") as f:
        if _has_attr_list(f, "layer_names") or (
            "model_weights" in f and _has_attr_list(f["model_weights"], "layer_names")):
          return "legacy-h5"
        if "layers" in f or "vars" in f:
          return "keras3-weights-h5"
    except OSError as e:
      raise WeightsError(f"{path}: HDF5 file that cannot be opened ({e}); is it truncated?") from e
    return _read_h5(path)[1]  # raises the 'no Keras weights' error
  if zipfile.is_zipfile(path):
    return "keras-zip"
  return _read_keras_file(path)[1]  # raises the 'not a Keras weights file' error


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

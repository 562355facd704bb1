"""Converting: Keras layers matched BY NAME to Flax modules, every shape checked against the module.

Keras and Flax share NHWC, HWIO conv kernels and (in, out) dense kernels, so converting is
renaming: every Keras layer is matched, through a layer map {keras layer name: Flax module
path}, to a Flax module whose shapes come from the module's own init. Nothing is matched by
position. The targets (a standalone backbone, or `build_model(config)`) come from the registry
of backbones (rpsflax.models).
"""

import os
from collections.abc import Mapping
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rpsflax import models
from rpsflax.errors import WeightsError
from rpsflax.models import vgg
from rpsflax.weights.keras_files import Weights, file_md5, read_keras_file

# Keras lists a layer's weights kernel (or gamma) first, then bias (beta), then a BatchNorm's
# moving mean and variance; Flax names them, in 'params' and 'batch_stats'.
COLLECTIONS = ("params", "batch_stats")
_KERAS_ORDER = {("params", "kernel"): 0, ("params", "embedding"): 0, ("params", "scale"): 0,
                ("params", "bias"): 1, ("batch_stats", "mean"): 2, ("batch_stats", "var"): 3}
# Top layers that keras-applications (the Keras 2 code the release files were made with) named
# differently from Keras 3: ResNet50's 'probs' and MobileNetV2's 'Logits' are 'predictions' now.
_KERAS_ALIASES = {"probs": "predictions", "Logits": "predictions"}

LayerMap = Mapping[str, tuple[str, ...]]


def subtree(tree, path):
  """tree[path[0]][path[1]]..., or None where the path ends early."""
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
    module = subtree(variables.get(collection, {}), path)
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
  return backbone_target(vgg.SPEC.name, include_top)


def backbone_target(name: str, include_top: bool = False, alpha: float = 1.0):
  """(shapes, layer map, ignore) for a standalone backbone (`models.backbone_module`).

  shapes: the params tree for VGG16, the variables tree {'params', 'batch_stats'} for the
  BatchNorm backbones. Without the top, a file's top layers are ignored.
  """
  spec = models.get_spec(name)
  module = spec.build(include_top=include_top, alpha=alpha)
  shapes = _init_shapes(module, (include_top and spec.top_size) or spec.min_size)
  layer_map = {n: (n,) for n in spec.layer_names(include_top, alpha)}
  top = set(spec.layer_names(True, alpha)) - set(layer_map)
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
  shapes = _init_shapes(models.build_model(config), size)
  layer_map = models.keras_layer_map(config)
  return shapes, layer_map, default_optional(layer_map)


def default_optional(layer_map: LayerMap) -> set[str]:
  """Head layers are optional (a VGG16 notop file has none); backbone layers are required."""
  return {k for k, p in layer_map.items() if tuple(p)[:1] == ("head",)}


def convert_keras_file(path, shapes, layer_map: LayerMap, *, optional=(), ignore=(),
                       description: str = "") -> tuple[dict, dict]:
  """Keras file -> (variables {'params': ..., 'batch_stats': ... (BatchNorm models)}: numpy
  trees of the matched layers, manifest)."""
  weights, fmt = read_keras_file(path)
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
  return load_keras_backbone(path, vgg.SPEC.name, include_top)


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

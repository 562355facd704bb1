"""Keras weight files -> {keras layer name: [arrays in Keras' order]}: the layouts Keras writes.

- legacy HDF5 (the released ImageNet files, Keras 2 `save_weights('x.h5')`, full-model `.h5`
  saves whose weights sit under `model_weights/`): root attribute `layer_names`; each layer
  group has an attribute `weight_names` in the layer's weight order (kernel, then bias).
- Keras 3 `.weights.h5`: groups `layers/<key>/vars/0, 1, ...` where <key> is the class-based
  path (`conv2d_3`); the layer's own name is the `name` attribute of its `vars` group.
- `.keras` zip: opened with `keras.saving.load_model(safe_mode=True, compile=False)`, so nothing
  is unpickled from a user file, then read layer by layer.

No TensorFlow at import time: Keras is imported (`import_keras`) only to read `.keras`, or by
rpsflax.weights.releases to download a release file.
"""

import hashlib
import os
import zipfile

import h5py
import ml_dtypes
import numpy as np

from rpsflax.errors import WeightsError

Weights = dict[str, list[np.ndarray]]


def read_keras_weights(path) -> Weights:
  """{keras layer name: [arrays in Keras order]} for every layer of the file that has weights."""
  return read_keras_file(path)[0]



def read_keras_file(path) -> tuple[Weights, str]:
  """(weights, the file's layout: 'legacy-h5', 'keras3-weights-h5' or 'keras-zip')."""
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
      f"{path}: not a Keras weights file: expected HDF5 (a legacy .h5 such as Keras' ImageNet "
      "release files, or a Keras 3 .weights.h5) or a .keras zip archive, but it is "
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
  keras = import_keras(f"read the .keras file {path}")
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


def import_keras(why: str):
  try:
    import keras  # noqa: PLC0415  (Keras and TensorFlow load only to read a .keras file)
  except ImportError as e:
    raise WeightsError(f"Keras (TensorFlow) is needed to {why} but is not installed: "
                       "pip install tensorflow, or convert the file on a machine that has it "
                       "(scripts/convert_keras_weights.py) and pass the converted folder") from e
  return keras


def sniff_keras_file(path) -> str:
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
  return read_keras_file(path)[1]  # raises the 'not a Keras weights file' error

def file_md5(path) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()

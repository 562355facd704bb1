"""Backbone features of one labelled image folder, every image and view computed once, on disk.

Cross-validation trains many heads on the same images (every fold, every recipe), so the frozen
backbone runs once per image and view and the result is kept:
  - view 0 is the clean image, view v >= 1 the recipe's augmentation drawn from
    `features.view_key(config.seed, v)` folded with the image's index (as rpsflax/features.py
    draws its training views);
  - each view is pooled at several `taps` of one backbone pass (`features.make_feature_fn`),
    e.g. block5 max and avg, block4 max and avg, so recipes that differ in pooling or layer
    share the same passes;
  - each view is stored on its own (`DIR/view<v>/`, features.save_cache's format and key), so a
    later run asking for more views computes only the new ones.
Model/step code: no TensorFlow here.
"""

import json
import pathlib
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rpsflax import data_files, features, models, pil_decode, steps, weights
from rpsflax.errors import DataError

VGG16_TAPS = ("block5_pool:max", "block5_pool:avg", "block4_pool:max", "block4_pool:avg")


def load_folder(data_dir, image_size: int, method: str = "nearest", num_parallel_calls: int = -1
                ) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
  """(paths, labels, class_names, uint8 images [n, S, S, 3]) of a class-per-folder split."""
  listing = data_files.list_folder(data_dir)
  if listing.layout not in ("classes", "flat"):
    raise DataError(f"{data_dir}: no labelled images (want {data_dir}/<class>/*.png)")
  class_names = listing.class_names
  labels = np.array([class_names.index(c) for c in listing.classes], np.int32)
  out = np.zeros((len(listing.files), image_size, image_size, 3), np.uint8)
  failed = pil_decode.decode_files(np.asarray(listing.files, dtype=object),
                                   (image_size, image_size), method, num_parallel_calls, out)
  if failed:
    raise DataError("cannot decode: " + "; ".join(f"{listing.files[i]} ({r})" for i, r in failed[:5]))
  return list(listing.files), labels, class_names, out


def backbone_variables(config, model) -> dict:
  """{'params', 'batch_stats'}: config.weights over a seeded random init (the head stays random)."""
  init = steps.init_variables(config, model, jax.random.PRNGKey(config.seed))
  return weights.load_variables_for_model(config.weights, init, models.keras_layer_map(config),
                                          rel=weights.imagenet_release(config))


def cache_fields(config, paths, labels, variables, taps: Sequence[str], view: int) -> dict:
  """What view `view`'s features depend on (the manifest key)."""
  return {
      "version": features.FORMAT_VERSION, "kind": "cv_view",
      "model": config.model.name, "dtype": config.model.dtype, "preprocess": config.preprocess,
      "image_size": int(config.data.image_size), "resize_method": config.data.resize_method,
      "weights_sha256": features.weights_fingerprint(variables["params"],
                                                     variables.get("batch_stats")),
      "taps": list(taps), "view": int(view), "seed": int(config.seed),
      "augment": config.augment.to_dict() if view else None,
      "files": features.files_fingerprint(paths, labels),
  }


def compute_view(config, model, variables, images: np.ndarray, view: int, taps: Sequence[str],
                 batch: int = 16) -> np.ndarray:
  """float32 [n, sum C]: the taps of view `view` of every image (fixed batch: one compile)."""
  fn = jax.jit(features.make_feature_fn(config, model, augmented=view > 0, taps=tuple(taps)))
  key = features.view_key(config.seed, view)
  stats = variables.get("batch_stats") or {}
  n = len(images)
  parts = []
  for start in range(0, n, batch):
    idx = np.arange(start, start + batch)
    take = np.minimum(idx, n - 1)  # pad the last batch with repeats, dropped below
    f = fn(variables["params"], stats, images[take], key, jnp.asarray(idx, jnp.int32))
    parts.append(np.asarray(f)[: n - start, 0, 0])
  return np.concatenate(parts)


def build_or_load(config, paths, labels, images, views: int, taps: Sequence[str], directory,
                  *, batch: int = 16, log: Callable[[str], None] = print) -> np.ndarray:
  """float32 [views, n, sum C]: each view read from DIR/view<v> when its key matches, else
  computed now and stored there."""
  model = models.build_model(config)
  variables = backbone_variables(config, model)
  out = []
  for v in range(views):
    d = pathlib.Path(directory) / f"view{v}"
    fields = json_plain(cache_fields(config, paths, labels, variables, taps, v))
    arrays, why = features.load_cache(d, fields)
    if arrays is not None:
      out.append(np.asarray(arrays["all"]))
      continue
    log(f"view {v}: computing ({why}), {len(images)} backbone passes")
    t0 = time.time()
    a = compute_view(config, model, variables, images, v, taps, batch)
    seconds = time.time() - t0
    features.save_cache(d, fields, {"all": a}, seconds)
    log(f"view {v}: {seconds:.0f} s, {seconds / len(images):.3f} s per image, stored in {d}")
    out.append(a)
  return np.stack(out)


def json_plain(fields: dict) -> dict:
  """Fields as JSON reads them back (tuples -> lists), so the key compares equal."""
  return json.loads(json.dumps(fields, default=str))


def taps_for(config) -> tuple[str, ...]:
  """The taps cached for `config`'s backbone (the recipes of rpsflax/cv_recipes.py read them)."""
  if models.get_spec(config.model.name).keras_application == "VGG16":  # the taps' layer names
    return VGG16_TAPS
  raise ValueError(f"config.model.name={config.model.name!r}: cross-validation caches VGG16 "
                   "taps only (name them in rpsflax/cv_features.py)")


def cache_seconds(directory, views: int) -> list[float]:
  """Seconds each cached view took to compute (its manifest's), for reports; None if unknown."""
  out = []
  for v in range(views):
    try:
      out.append(json.loads((pathlib.Path(directory) / f"view{v}" / features.MANIFEST)
                            .read_text())["seconds"])
    except (OSError, ValueError, KeyError):
      out.append(None)
  return out

"""Cached backbone features: with the backbone frozen, run it once per image, then train the head.

A frozen backbone computes the same function every epoch, so `configs/rps_cached.py` runs it once:
  - for every image of every split, un-augmented (view 0), and for each training image
    `config.cached_features.augmented_views` (K) more times on augmented copies (views 1..K;
    view k of image i is a pure function of (config.seed, k, i), whatever the batching);
  - stores them in WORKDIR/features (or config.cached_features.dir) as `<split>.npy`
    (float32 [views, n, ...]) with `manifest.json`, keyed by the backbone weights (and BatchNorm
    moving statistics), the split files (paths, labels, sizes, mtimes), the image size and
    everything else the features depend on.
    A resumed run reuses a matching cache; anything else is recomputed (the log says why);
  - trains the head on them for every epoch, in the very order of the uncached run; each epoch
    draws one of the K+1 views per image (seeded by (config.seed, epoch)).
The state holds the full model (backbone weights untouched + trained head), so checkpoints,
`rpsflax.predict` and `--mode=evaluate` use the full model on images, unchanged.

BatchNorm backbones (ResNet50, MobileNetV2) run in inference mode with the state's moving
statistics (`state.batch_stats`), as the uncached train step runs a frozen one: their BN layers
must not run in training mode (config.model.bn_trainable with BN layers trained), which would
move the statistics every step.

With global max/avg pooling the head's first op reduces the feature map, so the cache stores the
pooled vector as a [1, 1, C] map (the head's pooling of a 1x1 map is the identity): 2 KB per
VGG16 image instead of 100 KB, and the very same head outputs.

Model/step code: no TensorFlow here.
"""

import collections
import hashlib
import json
import os
import pathlib
import time
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from rpsflax import atomic, augment, data_files, errors, models, optim, sharding, steps

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_VIEW_TAG = 7031  # seeds the per-epoch view draw apart from every other seeded stream
_AUG_TAG = 7032   # seeds the augmented views


def enabled(config) -> bool:
  return bool(config.cached_features.enabled)


def pools_features(config) -> bool:
  """Whether the cache can hold pooled vectors (the head starts with a global max/avg pool)."""
  return config.head.pooling in ("max", "avg")


def check_settings(config) -> None:
  """ConfigError naming the key unless the cached-feature settings can work (no-op when disabled).

  The backbone must be frozen: features computed once would be stale after any backbone update,
  be it a trained weight or a BatchNorm layer in training mode moving its statistics.
  """
  if not enabled(config):
    return
  cf = config.cached_features
  problems = []
  if cf.augmented_views < 0:
    problems.append(f"config.cached_features.augmented_views={cf.augmented_views}: "
                    "must be 0 or more")
  if cf.augmented_views > 0 and not config.augment.enabled:
    problems.append(f"config.cached_features.augmented_views={cf.augmented_views} needs "
                    "config.augment.enabled=True (augmented views of what?); set it to 0")
  bn_training = models.bn_training_layers(config)
  if bn_training:
    problems.append(
        f"config.cached_features.enabled=True needs the backbone's BatchNorm layers in inference "
        f"mode, but config.model.bn_trainable=True runs {len(bn_training)} of them in training "
        f"mode ({', '.join(bn_training[:3])}{', ...' if len(bn_training) > 3 else ''}), updating "
        "their moving statistics every step: set --config.model.bn_trainable=False, or "
        "--config.cached_features.enabled=False")
  labels = traverse_util.flatten_dict(optim.param_labels(
      steps.abstract_params(config, models.build_model(config)),
      config))
  trained = [optim.path_str(p) for p, label in labels.items()
             if p[0] == "backbone" and label != optim.FROZEN]
  if trained:
    problems.append(
        f"config.cached_features.enabled=True needs a frozen backbone, but config.trainable / "
        f"config.lr_groups train {len(trained)} backbone parameters ({', '.join(trained[:3])}"
        f"{', ...' if len(trained) > 3 else ''}): set --config.cached_features.enabled=False to "
        "train them, or keep the backbone out of config.trainable and config.lr_groups")
  if problems:
    raise errors.ConfigError("\n".join(problems))


# ---------------------------------------------------------------------------------------------
# Computing features

def make_feature_fn(config, model, *, augmented: bool, taps: tuple[str, ...] = ()):
  """features(params, batch_stats, images uint8 [B,H,W,3], view_key, index int32 [B]) -> float32
  features.

  `taps` ('block4_pool:max', 'block5_pool:avg', ...): instead of the head's input, the global
  max/avg pools of these sown backbone outputs, concatenated as one [B, 1, 1, sum C] map (one
  backbone pass gives several poolings and layers, for comparing heads: rpsflax/cv_features.py).

  The backbone runs in inference mode: BatchNorm layers normalise with `batch_stats` (the
  state's moving statistics; {} for models without BN), as a frozen BN backbone in the steps.

  Augmented: image b gets the augmentation drawn from fold_in(view_key, index[b]) alone
  (vmapped), so a view of an example does not depend on the batch it was computed in. Pooled
  per `pools_features`, in the compute dtype (as the head would), then float32 (exact for bf16).
  """
  config = config.copy_and_resolve_references()
  pooled = pools_features(config)

  def fn(params, batch_stats, images, view_key, index):
    if augmented:
      def one(i, image):
        key = jax.random.fold_in(view_key, i)
        return augment.augment_batch(key, image[None], config.augment)[0]
      images = jax.vmap(one)(index, images)
    x = steps.prepare_images(config, images)  # (the step's exact preprocessing)
    if taps:
      _, sown = model.apply(steps.model_variables(params, batch_stats), x, method="features",
                            mutable=["intermediates"])
      return jnp.concatenate([_pool_tap(sown["intermediates"], t) for t in taps],
                             axis=-1)[:, None, None, :].astype(jnp.float32)
    f = model.apply(steps.model_variables(params, batch_stats), x, method="features")
    if pooled:
      reduce = jnp.max if config.head.pooling == "max" else jnp.mean
      f = reduce(f, axis=(1, 2), keepdims=True)
    return f.astype(jnp.float32)

  return fn


def _pool_tap(intermediates, tap: str):
  """[B, C]: the global pool ('layer:max' or 'layer:avg') of a sown backbone output."""
  layer, _, how = tap.partition(":")
  sown = intermediates.get("backbone", {})
  if layer not in sown or how not in ("max", "avg"):
    raise errors.ConfigError(f"feature tap {tap!r}: use 'LAYER:max' or 'LAYER:avg' with LAYER one "
                             f"of the backbone's sown outputs {sorted(sown)}")
  reduce = jnp.max if how == "max" else jnp.mean
  return reduce(sown[layer][0], axis=(1, 2))


def view_key(seed: int, view: int) -> jax.Array:
  """The key of augmented view `view`; image i of it draws from fold_in(view_key, i)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _AUG_TAG), view)


def _global_rows(n: int, batch: int, process_count: int, local_devices: int) -> np.ndarray:
  """[steps, rows] example index of every row of the global arrays that `shard_batch(pad=True)`
  builds from eval_batches (each process' slice padded to its local devices), -1 = padding."""
  parts = []
  for p in range(process_count):
    part = data_files.batch_index_matrix(np.arange(n), batch, p, process_count)
    extra = -part.shape[1] % local_devices
    parts.append(np.pad(part, ((0, 0), (0, extra)), constant_values=-1))
  return np.concatenate(parts, axis=1)


def _host(x) -> np.ndarray:
  """A replicated array's value on this host (fully addressable or not)."""
  return np.asarray(x.addressable_shards[0].data)


def compute_split(config, datasets, split: str, params, mesh, views: int, fns,
                  batch_stats=None) -> np.ndarray:
  """float32 [views, n, ...]: view 0 clean, views 1.. augmented (train only). `fns`: the
  model's `feature_fns`, reused across splits (compiled once). `batch_stats`: the state's
  BatchNorm statistics (needed for BN backbones; None for models without BN)."""
  n = datasets.num_examples[split]
  rows = _global_rows(n, datasets.eval_batch_size, datasets.process_count,
                      sharding.local_device_count(mesh))
  out = None  # [views, n, ...], once the first batch gives the features' shape
  repl = sharding.replicated(mesh)
  view_keys = [jax.device_put(np.asarray(view_key(config.seed, v)), repl) for v in range(views)]
  stats = batch_stats or {}
  pending = collections.deque()

  def drain(limit):
    nonlocal out
    while len(pending) > limit:
      b, v, f = pending.popleft()
      r, f = rows[b], _host(f)
      if out is None:
        out = np.zeros((views, n) + f.shape[1:], np.float32)
      ok = r >= 0
      out[v, r[ok]] = f[ok]

  batches = sharding.prefetch_to_mesh(datasets.eval_batches(split), mesh, pad=True)
  for b, batch in enumerate(batches):
    idx = jax.device_put(np.maximum(rows[b], 0).astype(np.int32), repl)
    for v in range(views):
      f = fns[v > 0](params, stats, batch["image"], view_keys[v], idx)
      pending.append((b, v, f))
    drain(2 * views)  # keep a few batches in flight: the host copies overlap the device work
  drain(0)
  return out


def feature_fns(config, model, mesh):
  """(clean, augmented) feature functions of (params, batch_stats, images, view_key, index),
  jit-compiled for `mesh` (images sharded on the batch, the rest replicated)."""
  repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  return tuple(jax.jit(make_feature_fn(config, model, augmented=a),
                       in_shardings=(repl, repl, data, repl, repl), out_shardings=repl)
               for a in (False, True))


# ---------------------------------------------------------------------------------------------
# The cache on disk

def weights_fingerprint(params, batch_stats=None) -> str:
  """sha256 of the backbone's parameters and BatchNorm moving statistics (paths, dtypes, shapes,
  bytes). Without batch_stats (models without BN) it is the parameters' digest alone, as before
  BN backbones could be cached, so existing caches stay valid."""
  h = hashlib.sha256()
  for prefix, tree in (("", params), ("batch_stats/", batch_stats)):
    flat = traverse_util.flatten_dict(tree.get("backbone", {}) if hasattr(tree, "get") else {})
    for path in sorted(flat):
      x = flat[path]
      a = _host(x) if isinstance(x, jax.Array) else np.asarray(x)
      h.update(f"{prefix}{optim.path_str(path)}:{a.dtype}:{a.shape};".encode())
      h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def data_fingerprint(datasets, split: str) -> str:
  """sha256 of a split's files: paths, labels, and each local file's size and mtime."""
  return files_fingerprint(datasets.split_paths(split), datasets.split_labels(split))


def files_fingerprint(paths, labels) -> str:
  """sha256 of (path, label, size, mtime) of each file: what cached features of them depend on."""
  h = hashlib.sha256()
  for path, label in zip(paths, labels):
    try:
      st = os.stat(path)
      stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:  # TFDS examples ('tfds://...') are identified by name
      stamp = "-"
    h.update(f"{path}\t{int(label)}\t{stamp}\n".encode())
  return h.hexdigest()


def cache_key_fields(config, datasets, params, batch_stats=None) -> dict:
  """Everything the cached features depend on (the manifest's key); `batch_stats`: the state's
  BatchNorm statistics (a checkpoint with other ones computes other features)."""
  k = int(config.cached_features.augmented_views)
  fields = {
      "version": FORMAT_VERSION,
      "model": config.model.name, "dtype": config.model.dtype, "preprocess": config.preprocess,
      "image_size": int(config.data.image_size), "resize_method": config.data.resize_method,
      "pooled": config.head.pooling if pools_features(config) else "none",
      "weights": config.weights, "weights_sha256": weights_fingerprint(params, batch_stats),
      "augmented_views": k, "seed": int(config.seed),
      "augment": config.augment.to_dict() if k else None,
      "data": {s: data_fingerprint(datasets, s) for s, n in sorted(datasets.num_examples.items())
               if n},
  }
  return json.loads(json.dumps(fields, default=str))  # tuples -> lists, as read back


def _key(fields: dict) -> str:
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def cache_dir(config, workdir) -> pathlib.Path:
  d = config.cached_features.dir
  return pathlib.Path(d).expanduser() if d else pathlib.Path(workdir) / "features"


def load_cache(directory, fields: dict) -> tuple[Optional[dict], str]:
  """({split: array (memory-mapped)}, '') when `directory` holds features for `fields`, else
  (None, why not)."""
  directory = pathlib.Path(directory)
  path = directory / MANIFEST
  if not path.is_file():
    return None, "no cache yet"
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    return None, f"unreadable {path} ({e})"
  if manifest.get("key") != _key(fields):
    old = manifest.get("fields", {})
    changed = sorted(k for k in set(old) | set(fields) if old.get(k) != fields.get(k))
    return None, f"cached for other settings (changed: {', '.join(changed) or 'format'})"
  arrays = {}
  for split, info in manifest.get("splits", {}).items():
    try:
      a = np.load(directory / f"{split}.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
      return None, f"{directory / (split + '.npy')} unreadable ({e})"
    if list(a.shape) != info["shape"] or a.dtype != np.float32:
      return None, f"{split}.npy has shape {a.shape}, the manifest says {info['shape']}"
    arrays[split] = a
  return arrays, ""


def save_cache(directory, fields: dict, arrays: dict, seconds: float) -> pathlib.Path:
  """Write <split>.npy then the manifest (last: a cache without one is never used)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / MANIFEST).unlink(missing_ok=True)  # invalid until rewritten
  for split, a in arrays.items():
    with atomic.replacing(directory / f"{split}.npy") as tmp, open(tmp, "wb") as f:
      np.save(f, np.ascontiguousarray(a, np.float32))  # a file object: no '.npy' appended
  manifest = {"key": _key(fields), "fields": fields, "seconds": round(seconds, 3),
              "splits": {s: {"shape": list(a.shape), "views": int(a.shape[0])}
                         for s, a in arrays.items()}}
  atomic.write_text(directory / MANIFEST, json.dumps(manifest, indent=1))
  return directory


def build_or_load(config, workdir, datasets, params, mesh, model,
                  batch_stats=None) -> tuple[dict, dict]:
  """({split: [views, n, ...] float32}, info) from the cache, computed now when it does not fit.
  `batch_stats`: the state's BatchNorm statistics (None for models without BN)."""
  fields = cache_key_fields(config, datasets, params, batch_stats)
  directory = cache_dir(config, workdir)
  multi = jax.process_count() > 1
  arrays, why = (None, "multi-process run: computed in memory") if multi else load_cache(
      directory, fields)
  if arrays is not None:
    logging.info("cached features: reusing %s", directory)
    return arrays, {"reused": True, "seconds": 0.0, "directory": str(directory)}
  logging.info("cached features: computing them (%s)", why)
  views = 1 + int(config.cached_features.augmented_views)
  t0 = time.time()
  arrays, images = {}, 0
  fns = feature_fns(config, model, mesh)
  for split, n in sorted(datasets.num_examples.items()):
    if n:
      v = views if split == "train" else 1
      arrays[split] = compute_split(config, datasets, split, params, mesh, v, fns, batch_stats)
      images += v * n
  seconds = time.time() - t0
  if sharding.is_chief():
    save_cache(directory, fields, arrays, seconds)
  logging.info("cached features: %d forward passes (%d train images x %d views + other splits) in "
               "%.1fs (%.1f images/s), stored in %s", images, datasets.num_examples.get("train", 0),
               views, seconds, images / max(seconds, 1e-9), directory)
  return arrays, {"reused": False, "seconds": seconds, "directory": str(directory),
                  "images": images, "images_per_sec": images / max(seconds, 1e-9)}


# ---------------------------------------------------------------------------------------------
# Feature batches, in the uncached run's order

def view_choice(seed: int, epoch: int, n: int, views: int) -> np.ndarray:
  """Which view each training example uses in `epoch` (0-based): a pure function of its args."""
  if views == 1:
    return np.zeros(n, np.int64)
  return data_files.seeded_rng(seed, _VIEW_TAG, epoch).integers(0, views, n)


class FeatureDatasets:
  """A `Datasets` whose batches carry cached features under 'image' (the steps' batch key).

  Sizes, class names, order and padding are those of the wrapped image `Datasets`; the features
  are in memory (or memory-mapped) whatever config.data.cache says.
  """

  cache = True

  def __init__(self, datasets, arrays: dict, seed: int):
    self._ds, self._arrays, self._seed = datasets, arrays, seed

  def __getattr__(self, name):  # class_names, num_examples, steps_per_epoch, ...
    return getattr(self._ds, name)

  def train_rows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, views): the uncached run's [steps, batch] example indices of `epoch` (-1 =
    padding), and the view each row reads (`view_choice`, 0 for padding)."""
    a = self._arrays["train"]
    view = view_choice(self._seed, epoch, a.shape[1], a.shape[0])
    idx, _ = self._ds.train_rows(epoch)
    return idx, np.where(idx >= 0, view[np.maximum(idx, 0)], 0)

  def eval_rows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in self._arrays:
      raise errors.DataError(f"no cached features for split {split!r}")
    return self._ds.eval_rows(split)

  def split_array_spec(self, split: str) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(self._arrays[split].shape), np.dtype(np.float32)

  def split_array(self, split: str) -> np.ndarray:
    """float32 [views, n, ...]: the cached features of `split` (read from the file now)."""
    return np.asarray(self._arrays[split], np.float32)

  def train_batches(self, epoch: int) -> Iterator[dict]:
    return self._batches("train", *self.train_rows(epoch))

  def eval_batches(self, split: str = "validation") -> Iterator[dict]:
    return self._batches(split, *self.eval_rows(split))

  def _batches(self, split, idx, views) -> Iterator[dict]:
    a, labels = self._arrays[split], self._ds.split_labels(split)
    for row, view in zip(idx, views):
      ok = row >= 0
      take = np.where(ok, row, 0)
      feats = np.asarray(a[view, take], np.float32)  # mmap -> memory, this batch only
      feats[~ok] = 0
      yield {"image": feats, "label": np.where(ok, labels[take], 0).astype(np.int32), "mask": ok}


def feature_datasets(config, workdir, datasets, state, mesh, model) -> "FeatureDatasets":
  """The features of `datasets` for train_and_evaluate's loop, whose head-only steps
  (`steps.compile_steps(on_features=True)`) train on them (config checked by `check_settings`
  before the run started)."""
  if config.augment.enabled and not config.cached_features.augmented_views:
    logging.info("cached features: config.cached_features.augmented_views=0, so the head trains "
                 "on un-augmented features only (config.augment is not applied)")
  arrays, info = build_or_load(config, workdir, datasets, state.params, mesh, model,
                               state.batch_stats)
  n = datasets.num_examples.get("train", 0)
  epochs = int(config.num_epochs)
  if not info["reused"] and info.get("images"):
    rate = info["images_per_sec"]
    logging.info("cached features: the uncached run would run the backbone on %d images x %d "
                 "epochs (>= %.0fs at this rate, plus backward/augmentation); cached: %.0fs once, "
                 "then only the head trains", n, epochs, n * epochs / rate, info["seconds"])
  return FeatureDatasets(datasets, arrays, int(config.seed))

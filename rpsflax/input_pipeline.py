"""The input pipeline: image folders or the TFDS catalog -> padded, masked NumPy batches.

Listing, checking and splitting folders is TF-free (rpsflax/data_files.py); this module picks
the decoder (config.data.decoder), decodes and batches. 'pil' (the default) decodes with PIL in
worker processes or threads (rpsflax/decode_pool.py, rpsflax/pil_decode.py) and never imports
TensorFlow; 'tf' decodes in tf.data maps (rpsflax/tf_decode.py, which also reads TFDS, and
imports TensorFlow at first use). Both give Keras' `load_img` pixels (PIL `convert('RGB')`, then
PIL's resize; 'nearest', flow_from_directory's default, bit for bit), with the same cache, order,
padding and masks.

With config.data.cache (the default) each image is decoded once into a uint8 array; an epoch
is then a seeded permutation gathered batch by batch with NumPy, prefetched in a thread.
Batches: {'image': uint8 [B,H,W,3], 'label': int32 [B], 'mask': bool [B]}, B the per-process
batch, the last batch zero-padded with mask False, in training too (steps = ceil(n / batch)).
"""

import dataclasses
import math
import os
import queue
import threading
from typing import Iterator, Optional, Sequence

import jax
import numpy as np
from absl import logging

from rpsflax import data_files, decode_pool, pil_decode, pil_image, tf_decode
from rpsflax.errors import DataError

_KNOWN_TFDS_SPLITS = {"rock_paper_scissors": ("train", "test"), "cats_vs_dogs": ("train",)}
_PROGRESS_MIN = 2000


def check_decoder(decoder: str, method: str) -> str:
  """config.data.decoder and config.data.resize_method, checked together: 'pil' (the default:
  PIL in worker processes, no TensorFlow import) or 'tf' (tf.data, which adds tf.image.resize's
  methods). Both give Keras' load_img pixels (tests/test_no_tensorflow.py)."""
  if decoder not in data_files.DECODERS:
    raise DataError(f"config.data.decoder={decoder!r}: use one of {list(data_files.DECODERS)}")
  if decoder == "tf" and tf_decode.import_tensorflow() is None:
    raise DataError(f"config.data.decoder='tf' needs TensorFlow, which does not import here "
                    f"({tf_decode.tensorflow_missing()}): use 'pil'")
  if method not in data_files.RESIZE_METHODS:
    raise DataError(f"config.data.resize_method={method!r}: use one of "
                    f"{sorted(data_files.RESIZE_METHODS)} ('nearest' is Keras' "
                    "flow_from_directory default)")
  if decoder == "pil" and method not in pil_image.PIL_FILTERS:
    raise DataError(f"config.data.resize_method={method!r} needs config.data.decoder='tf' "
                    f"(tf.image.resize): with PIL use one of {sorted(pil_image.PIL_FILTERS)}")
  return decoder


def _log_decoder(decoder: str) -> None:
  if decoder == "pil":
    logging.info("decoding images with PIL, %d workers (rpsflax/decode_pool.py)",
                 pil_decode.num_threads(-1))
  else:
    logging.info("decoding images with tf.data (TensorFlow %s)", tf_decode.tf.__version__)


def _image_size(size) -> tuple[int, int]:
  if isinstance(size, int):
    return (size, size)
  h, w = size
  return (int(h), int(w))


def decode_files(decoder: str, paths: np.ndarray, codes: np.ndarray, size, method,
                 num_parallel_calls, out: np.ndarray, desc: str = "decoding",
                 max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> list[tuple[int, str]]:
  """Decode paths[i] into out[i] in parallel with `decoder` ('pil': PIL in processes, 'tf':
  tf.data); returns [(i, reason)] of files no decoder read."""
  if len(paths) == 0:
    return []
  if decoder == "pil":
    return decode_pool.decode_files(paths, size, method, num_parallel_calls, out, desc,
                                    _PROGRESS_MIN, max_pixels)
  return tf_decode.decode_files(paths, codes, size, method, num_parallel_calls, out, desc,
                                _PROGRESS_MIN, max_pixels)


# ---------------------------------------------------------------------------------------------
# Batching.

def _prefetch(make_iter, size: int = 2):
  """Run `make_iter()` in a thread, `size` items ahead; stops when the consumer does."""
  q, stop, end = queue.Queue(size), threading.Event(), object()

  def put(item):
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def work():
    try:
      for item in make_iter():
        if not put(item):
          return
      put(end)
    except BaseException as e:  # pylint: disable=broad-except
      put(_Raised(e))

  threading.Thread(target=work, daemon=True, name="rpsflax-prefetch").start()
  try:
    while True:
      item = q.get()
      if item is end:
        return
      if isinstance(item, _Raised):
        raise item.error
      yield item
  finally:
    stop.set()


@dataclasses.dataclass
class _Raised:
  error: BaseException


@dataclasses.dataclass
class _Split:
  paths: np.ndarray              # str
  labels: np.ndarray             # int32
  codes: np.ndarray              # int32 decoder codes
  images: Optional[np.ndarray] = None   # cache, uint8 [n, H, W, 3]
  decoded: Optional[np.ndarray] = None  # bool [n]: rows of `images` filled


class Datasets:
  """The splits of one data source, batched for this process. See the module docstring."""

  def __init__(self, *, class_names: Sequence[str], splits: dict[str, _Split],
               skipped: list[tuple[str, str]], image_size, resize_method: str, batch_size: int,
               eval_batch_size: int, seed: int, cache: bool = True, num_parallel_calls: int = -1,
               process_index: int = 0, process_count: int = 1, source: str = "",
               report: Optional[dict] = None, decoder: str = "pil",
               max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS):
    _check_batches(batch_size, eval_batch_size, process_count)
    self.class_names = list(class_names)
    self.skipped = list(skipped)
    self.image_size = _image_size(image_size)
    self.resize_method, self.decoder = resize_method, decoder  # config.data.decoder
    self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
    self.seed, self.cache = seed, cache
    self.num_parallel_calls = num_parallel_calls
    self.max_pixels = int(max_pixels)
    self.process_index, self.process_count = process_index, process_count
    self.source = source
    self.report = report or {}
    self._splits = splits
    self._lock = threading.Lock()

  # -- sizes ----------------------------------------------------------------------------------
  @property
  def num_examples(self) -> dict[str, int]:
    return {k: len(s.paths) for k, s in self._splits.items()}

  @property
  def steps_per_epoch(self) -> int:
    return math.ceil(self.num_examples.get("train", 0) / self.batch_size)

  def eval_steps(self, split: str) -> int:
    return math.ceil(len(self._get(split).paths) / self.eval_batch_size)

  def split_paths(self, split: str) -> list[str]:
    return [str(p) for p in self._get(split).paths]

  def split_labels(self, split: str) -> np.ndarray:
    return self._get(split).labels.copy()

  def _get(self, split: str) -> _Split:
    if split not in self._splits:
      raise DataError(f"no split {split!r} in {self.source}: have {sorted(self._splits)}")
    return self._splits[split]

  # -- batches --------------------------------------------------------------------------------
  def train_order(self, epoch: int) -> np.ndarray:
    """Global example order of `epoch`: a pure function of (config.seed, epoch)."""
    return data_files.epoch_order(self.seed, epoch, len(self._get("train").paths))

  def train_rows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, views) of epoch `epoch`: this process' [steps, batch] example indices (-1 =
    padding) and the view of `split_array` each one reads (0: images have one)."""
    idx = data_files.batch_index_matrix(self.train_order(epoch), self.batch_size,
                                        self.process_index, self.process_count)
    return idx, np.zeros_like(idx)

  def eval_rows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, views) of `split`: every example once, in file order (see `train_rows`)."""
    idx = data_files.batch_index_matrix(np.arange(len(self._get(split).paths)),
                                        self.eval_batch_size, self.process_index,
                                        self.process_count)
    return idx, np.zeros_like(idx)

  def train_batches(self, epoch: int) -> Iterator[dict]:
    """This process's slice of every global batch of epoch `epoch` (shuffled, padded)."""
    return self._batches("train", self.train_rows(epoch)[0])

  def eval_batches(self, split: str = "validation") -> Iterator[dict]:
    """Every example of `split` exactly once, in file order, padded and masked."""
    return self._batches(split, self.eval_rows(split)[0])

  def split_array_spec(self, split: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape [views, n, H, W, 3] and dtype of `split_array`, without decoding anything."""
    return (1, len(self._get(split).paths), *self.image_size, 3), np.dtype(np.uint8)

  def split_array(self, split: str) -> np.ndarray:
    """uint8 [1, n, H, W, 3]: every image of `split` (decoded now if not yet), the batches'
    source (a view of the cache, not a copy)."""
    s = self._get(split)
    self._ensure_decoded(split, np.arange(len(s.paths)))
    return s.images[None]

  def prepare(self, splits: Optional[Sequence[str]] = None):
    """Decode the caches now (else done on first use): training splits, or `splits`."""
    if not self.cache:
      return
    for name in splits or [s for s in ("train", "validation") if s in self._splits]:
      self._ensure_decoded(name, np.arange(len(self._splits[name].paths)))

  def _batches(self, split: str, idx: np.ndarray) -> Iterator[dict]:
    s = self._get(split)
    if self.cache or s.images is not None:
      self._ensure_decoded(split, np.unique(idx[idx >= 0]))
      return _prefetch(lambda: (self._gather(s, row) for row in idx))
    return self._stream(s, idx)

  @staticmethod
  def _gather(s: _Split, row: np.ndarray) -> dict:
    valid = row >= 0
    take = np.where(valid, row, 0)
    images = s.images[take]
    images[~valid] = 0
    return {"image": images, "label": np.where(valid, s.labels[take], 0).astype(np.int32),
            "mask": valid}

  def _ensure_decoded(self, split: str, rows: np.ndarray):
    s = self._splits[split]
    with self._lock:
      n = len(s.paths)
      if s.images is None:
        h, w = self.image_size
        s.images = np.zeros((n, h, w, 3), np.uint8)  # calloc: untouched rows cost nothing
        s.decoded = np.zeros(n, bool)
        logging.info("caching %d %s images at %dx%d (%.2f GB)", n, split, h, w,
                     n * h * w * 3 / 1e9)
      rows = rows[~s.decoded[rows]]
      if not len(rows):
        return
      tmp = np.zeros((len(rows), *s.images.shape[1:]), np.uint8)
      failed = decode_files(self.decoder, s.paths[rows], s.codes[rows], self.image_size,
                            self.resize_method, self.num_parallel_calls, tmp,
                            desc=f"decoding {split}", max_pixels=self.max_pixels)
      if failed:
        i, reason = failed[0]
        raise DataError(f"{s.paths[rows[i]]}: {reason}. It was readable when the data was "
                        f"checked; it changed since. Remove or restore it "
                        f"({len(failed)} such files)")
      s.images[rows] = tmp
      s.decoded[rows] = True

  def _stream(self, s: _Split, idx: np.ndarray) -> Iterator[dict]:
    """Uncached: decode each batch (tf.data map or PIL threads, prefetched), in order."""
    if self.decoder == "pil":
      return pil_decode.stream(s.paths, s.labels, idx, self.image_size, self.resize_method,
                               self.num_parallel_calls, max_pixels=self.max_pixels)
    return tf_decode.stream(s.paths, s.codes, s.labels, idx, self.image_size,
                            self.resize_method, self.num_parallel_calls, self.max_pixels)


# ---------------------------------------------------------------------------------------------
# Sources.

def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} outside [0, {process_count})")
  return process_index, process_count


def _check_batches(batch_size, eval_batch_size, process_count):
  for key, b in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if b <= 0 or b % process_count:
      raise DataError(f"config.{key}={b} must be positive and divide by the number of "
                      f"processes ({process_count})")


def _check_head(config, class_names):
  n = config.head.num_classes
  if n is None:
    return
  if not (n == len(class_names) or (n == 1 and len(class_names) == 2)):
    raise DataError(f"config.head.num_classes={n} but the data has {len(class_names)} classes "
                    f"{class_names}: set --config.head.num_classes={len(class_names)}"
                    + (" (or 1 for a sigmoid output)" if len(class_names) == 2 else "")
                    + ", or train with --config=configs/folder.py, whose head follows the data")


def _split_objects(splits, infos: dict[str, data_files.ImageInfo]) -> dict[str, _Split]:
  return {k: _Split(np.asarray(paths, dtype=object), np.asarray(labels, np.int32),
                    tf_decode.decoder_codes([infos[p] for p in paths]))
          for k, (paths, labels) in splits.items()}


def create_datasets(config, workdir=None, *, process_index: Optional[int] = None,
                    process_count: Optional[int] = None, check_head: bool = True,
                    write: bool = True,
                    listings: Optional[dict[str, data_files.FolderListing]] = None) -> Datasets:
  """The train/validation(/holdout/test) splits of config.data.dir, or of TFDS when it is ''.

  `listings`: config.data.dir's split folders when the caller has listed them already
  (train.preflight), so that a run lists its folder once.

  Checks every file, draws or reuses the splits, writes workdir/splits/*.txt and
  workdir/data_report.json (process 0 only; nothing when workdir is None or `write` is False:
  evaluating a workdir only reads its splits). Raises DataError
  before any training for anything a user must fix (with `check_head`, also a class count
  that config.head.num_classes cannot represent).
  """
  pi, pc = _process(process_index, process_count)
  decoder = check_decoder(config.data.decoder, config.data.resize_method)
  _check_batches(config.batch_size, config.eval_batch_size, pc)
  _log_decoder(decoder)
  common = dict(image_size=config.data.image_size, resize_method=config.data.resize_method,
                decoder=decoder,
                batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                seed=config.seed, num_parallel_calls=config.data.num_parallel_calls,
                process_index=pi, process_count=pc, max_pixels=config.data.max_image_pixels)
  if config.data.dir:
    fd = data_files.prepare_folder(config.data.dir, workdir, seed=config.seed,
                                   holdout=config.data.holdout,
                                   val_fraction=config.data.val_fraction,
                                   write=write and pi == 0,
                                   max_pixels=config.data.max_image_pixels, listings=listings)
    if check_head:
      _check_head(config, fd.class_names)
    splits = _split_objects(fd.splits, fd.infos)
    return Datasets(class_names=fd.class_names, splits=splits, skipped=fd.skipped,
                    cache=config.data.cache, source=fd.report["source"], report=fd.report,
                    **common)
  return _tfds_datasets(config, workdir, write=write and pi == 0, common=common,
                        check_head=check_head)


def create_eval_dataset(config, path, class_names: Optional[Sequence[str]] = None, *,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None,
                        listing: Optional[data_files.FolderListing] = None) -> Datasets:
  """Every readable labelled image of one folder (either layout) as split 'eval'.

  For evaluating a trained model on another folder: labels index `class_names` (the model's
  classes; the folder may hold a subset), else the folder's own sorted classes. `listing`: the
  folder's, when the caller has listed it already.
  """
  pi, pc = _process(process_index, process_count)
  decoder = check_decoder(config.data.decoder, config.data.resize_method)
  _log_decoder(decoder)
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise DataError(f"{path}: no such folder to evaluate on")
  listing = data_files.list_folder(path) if listing is None else listing
  if listing.layout not in ("classes", "flat"):
    raise DataError(f"{path} has no labelled images ({listing.layout}): use class folders or "
                    "class-prefixed file names; to label unlabelled images use rpsflax.predict")
  infos, skipped = data_files.scan_images(listing.files, max_pixels=config.data.max_image_pixels)
  names = list(class_names) if class_names is not None else listing.class_names
  unknown = sorted(set(listing.classes) - set(names))
  if unknown:
    raise DataError(f"{path} has classes {unknown} that the model does not know ({names})")
  index = {c: i for i, c in enumerate(names)}
  ok = [(f, index[c]) for f, c in zip(listing.files, listing.classes) if f in infos]
  if not ok:
    raise DataError(f"{path} has no readable image ({len(skipped)} unreadable)")
  splits = {"eval": ([f for f, _ in ok], np.asarray([l for _, l in ok], np.int32))}
  report = data_files.make_report(source=path, class_names=names, splits=splits,
                                  skipped=skipped, ignored=listing.ignored,
                                  layouts={"eval": listing.layout})
  data_files.log_report(report)
  return Datasets(class_names=names, splits=_split_objects(splits, infos), skipped=skipped,
                  cache=config.data.cache,
                  source=path, report=report, image_size=config.data.image_size,
                  resize_method=config.data.resize_method, decoder=decoder,
                  batch_size=config.batch_size,
                  eval_batch_size=config.eval_batch_size, seed=config.seed,
                  num_parallel_calls=config.data.num_parallel_calls, process_index=pi,
                  process_count=pc, max_pixels=config.data.max_image_pixels)


def _offline_message(name: str, data_dir, error: Exception) -> str:
  where = data_dir or "~/tensorflow_datasets"
  return (f"no local data: config.data.dir is '' and the TFDS dataset {name!r} is not prepared "
          f"in {where}, and downloading it failed ({type(error).__name__}: "
          f"{str(error)[:300]}). Fix: pass a local folder with --config.data.dir=/path/to/"
          f"folder (DIR/train/<class>/*.jpg or flat DIR/train/cat.1.jpg, optional "
          f"DIR/validation), or run once online to let TFDS download {name!r} (or set "
          f"--config.data.tfds_data_dir to where it is prepared)")


def _import_tfds(name: str):
  """tensorflow_datasets, or the DataError that says to pass a folder instead."""
  why = None if tf_decode.import_tensorflow() is not None else (
      f"TensorFlow does not import ({tf_decode.tensorflow_missing()})")
  if why is None:
    try:
      import tensorflow_datasets as tfds  # noqa: PLC0415  (optional; seconds to import)
      return tfds
    except Exception as e:  # pylint: disable=broad-except
      why = f"tensorflow_datasets does not import ({type(e).__name__}: {e})"
  raise DataError(f"config.data.dir is '', so the data would come from the TFDS catalog "
                  f"(config.data.tfds_name={name!r}), which needs TensorFlow and "
                  f"tensorflow_datasets: {why}. Fix: pass a local folder with "
                  f"--config.data.dir=/path/to/folder, or pip install tensorflow "
                  f"tensorflow-datasets")


def _tfds_datasets(config, workdir, *, write: bool, common: dict, check_head: bool) -> Datasets:
  name, data_dir = config.data.tfds_name, config.data.tfds_data_dir or None
  if not name:
    raise DataError("no data: config.data.dir and config.data.tfds_name are both empty; pass "
                    "--config.data.dir=/path/to/folder")
  tfds = _import_tfds(name)
  if not config.data.cache:
    logging.info("TFDS data is decoded once into memory whatever config.data.cache says")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"config.data.tfds_name={name!r} is not a TFDS dataset ({e}); or pass "
                    "--config.data.dir=/path/to/folder") from e
  if not builder.is_prepared():
    logging.info("TFDS %s is not prepared in %s: downloading", name, builder.data_dir)
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(_offline_message(name, data_dir, e)) from e
  available = list(builder.info.splits.keys()) or list(_KNOWN_TFDS_SPLITS.get(name, ("train",)))
  label_names = list(builder.info.features["label"].names)
  class_names = sorted(label_names)  # alphabetical, as for folders (TFDS rps: rock, paper, ..)
  if check_head:
    _check_head(config, class_names)
  remap = np.asarray([class_names.index(c) for c in label_names], np.int32)
  val_split = next((s for s in ("validation", "test") if s in available), None)
  wanted = {"train": "train", **({"validation": val_split} if val_split else {})}
  size = _image_size(config.data.image_size)
  arrays, where, sources, skipped = {}, {}, {}, []
  for role, split in wanted.items():
    arrays[split], labels, failed = tf_decode.read_tfds_split(
        builder, split, size, config.data.resize_method, config.data.num_parallel_calls)
    keep = np.setdiff1d(np.arange(len(labels)), failed)
    paths = [f"{data_files.TFDS_PREFIX}{name}/{split}/{i}" for i in keep]
    skipped += [(f"{data_files.TFDS_PREFIX}{name}/{split}/{i}", "cannot decode") for i in failed]
    where.update({p: (split, i) for p, i in zip(paths, keep)})
    sources[role] = (paths, remap[labels[keep]])
  source = f"{data_files.TFDS_PREFIX}{name}"
  splits, notes = data_files.assign_splits(
      sources, class_names, seed=config.seed, holdout=config.data.holdout,
      val_fraction=config.data.val_fraction, source=source, workdir=workdir, write=write)
  objs = {}
  for k, (paths, labels) in splits.items():
    arr = np.zeros((len(paths), *size, 3), np.uint8)
    for j, p in enumerate(paths):
      sp, i = where[p]
      arr[j] = arrays[sp][i]
    objs[k] = _Split(np.asarray(paths, dtype=object), np.asarray(labels, np.int32),
                     np.zeros(len(paths), np.int32), arr, np.ones(len(paths), bool))
  report = data_files.make_report(source=source, class_names=class_names, splits=splits,
                                  skipped=skipped, tfds_splits=wanted, seed=config.seed,
                                  holdout=config.data.holdout,
                                  val_fraction=config.data.val_fraction, **notes)
  if workdir is not None and write:
    data_files.write_report(workdir, report)
  data_files.log_report(report)
  return Datasets(class_names=class_names, splits=objs, skipped=skipped, cache=True,
                  source=source, report=report, **common)


# ---------------------------------------------------------------------------------------------
# Prediction.

def load_images(paths: Sequence[str], image_size, resize_method: str = "nearest",
                num_parallel_calls: int = -1, decoder: str = "pil",
                ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
  """Decode files for prediction: (uint8 [n,H,W,3], readable paths, [(path, reason)]);
  `decoder`: config.data.decoder."""
  check_decoder(decoder, resize_method)
  paths = [os.fspath(p) for p in paths]
  infos, skipped = data_files.scan_images(paths)
  ok = [p for p in paths if p in infos]
  size = _image_size(image_size)
  out = np.zeros((len(ok), *size, 3), np.uint8)
  failed = decode_files(decoder, np.asarray(ok, dtype=object),
                        tf_decode.decoder_codes([infos[p] for p in ok]), size, resize_method,
                        num_parallel_calls, out)
  if failed:
    bad = {i for i, _ in failed}
    skipped += [(ok[i], r) for i, r in failed]
    keep = [i for i in range(len(ok)) if i not in bad]
    out, ok = out[keep], [ok[i] for i in keep]
  for p, r in skipped:
    logging.warning("skipped %s: %s", p, r)
  return out, ok, skipped

"""The PIL decoder (config.data.decoder='pil', the default; no TensorFlow) in threads: whole
folders (`decode_files`, where rpsflax/decode_pool.py's processes do not pay or cannot start) and
uncached batches (`stream`). One image is rpsflax/pil_image.py's.

It gives the same bits as the tf.data decoder (rpsflax/tf_decode.py) for 'nearest' (Keras'
flow_from_directory default): PIL's `convert('RGB')` as Keras' `load_img` does (what tf.io
gives on JPEGs and 8-bit PNGs), except 16-bit grey PNGs, where it keeps the high byte as tf.io
does (README, Data), and PIL's NEAREST resize reads the rows and columns tf_decode's resize
gathers (tests/test_no_tensorflow.py). The smooth methods use PIL's own filters: Keras-exact, and within
the 1-2 levels of tf.image.resize that the TF path documents.

PIL releases the GIL while it decodes, converts and resizes, so threads decode in parallel,
up to what opening files and parsing headers in Python allows (docs/decoding.md).
"""

import collections
import concurrent.futures
import itertools
import os
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from rpsflax import data_files
from rpsflax.errors import DataError
from rpsflax.pil_image import load_image, rgb_image

PREFETCH_BATCHES = 2  # uncached: batches decoded ahead of the consumer


def num_threads(num_parallel_calls: int) -> int:
  """config.data.num_parallel_calls (-1 = automatic) -> decoding threads."""
  if num_parallel_calls and num_parallel_calls > 0:
    return int(num_parallel_calls)
  return min(32, os.cpu_count() or 1)


def rgb(data: bytes, max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
  """Encoded bytes -> uint8 [h, w, 3] (`rgb_image` as an array)."""
  return np.asarray(rgb_image(data, max_pixels))


def load(path: str, size, method: str,
         max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
  """One file -> uint8 [size[0], size[1], 3]. PIL decodes, converts and resizes with the GIL
  released; the one array made is the small resized one (a full-size np.asarray holds the GIL
  for about as long as the decode takes)."""
  return np.asarray(load_image(path, size, method, max_pixels))


def _try_load(path, size, method, max_pixels):
  try:
    return load(path, size, method, max_pixels), None
  except Exception as e:  # pylint: disable=broad-except
    return None, f"cannot decode: {e}"


def decode_files(paths: np.ndarray, size, method: str, num_parallel_calls: int, out: np.ndarray,
                 desc: str = "decoding", progress_min: int = 2000,
                 max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> list[tuple[int, str]]:
  """Decode paths[i] into out[i] in a thread pool; returns [(i, reason)] of unreadable files."""
  failed = []
  with concurrent.futures.ThreadPoolExecutor(num_threads(num_parallel_calls)) as pool:
    results = pool.map(lambda p: _try_load(str(p), size, method, max_pixels), paths)
    for i, (image, reason) in enumerate(tqdm(results, total=len(paths), desc=desc, unit="img",
                                             disable=len(paths) < progress_min)):
      if image is None:
        failed.append((i, reason))
      else:
        out[i] = image
  return failed


def decode_batch(paths: np.ndarray, labels: np.ndarray, row: np.ndarray, size,
                 load_one: Callable[[str], np.ndarray]) -> dict:
  """One batch of an uncached split: row's images (-1 = padding, zeros) by `load_one(path)`,
  with labels and mask. A file that fails now was readable when the data was checked: a
  DataError names it."""
  images = np.zeros((len(row), *size, 3), np.uint8)
  for j, i in enumerate(row):
    if i >= 0:
      try:
        images[j] = load_one(str(paths[i]))
      except Exception as e:  # pylint: disable=broad-except
        raise DataError(f"{paths[i]}: cannot decode ({e}). It was readable when the data "
                        "was checked; it changed since. Remove or restore it") from e
  valid = row >= 0
  return {"image": images, "label": np.where(valid, labels[np.maximum(row, 0)], 0)
          .astype(np.int32), "mask": valid}


def stream(paths: np.ndarray, labels: np.ndarray, idx: np.ndarray, size, method: str,
           num_parallel_calls: int, prefetch: int = PREFETCH_BATCHES,
           max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[dict]:
  """Uncached batches: row s of `idx` (-1 = padding) decoded in a thread pool, in order,
  `prefetch` batches ahead. Same dicts as input_pipeline's cached batches."""
  def batch(row):
    return decode_batch(paths, labels, row, size, lambda p: load(p, size, method, max_pixels))

  # One task per batch keeps the order trivially; `workers` batches in flight keep every
  # thread busy.
  workers = num_threads(num_parallel_calls)
  pool = concurrent.futures.ThreadPoolExecutor(workers)
  rows = iter(idx)
  pending = collections.deque(pool.submit(batch, r)
                              for r in itertools.islice(rows, max(prefetch, workers)))
  try:
    while pending:
      result = pending.popleft().result()
      pending.extend(pool.submit(batch, r) for r in itertools.islice(rows, 1))
      yield result
  finally:  # the consumer stopped (or a file failed): drop what is queued
    pool.shutdown(wait=True, cancel_futures=True)

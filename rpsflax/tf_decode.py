"""The tf.data decoder (config.data.decoder='tf') and TFDS reading: the package's TensorFlow.

TensorFlow is imported at first use (`import_tensorflow`, 5-8 s on a CPU machine: a run that
decodes with PIL never pays it) with every GPU hidden from it, so that JAX owns the accelerator
memory. tf.io decodes JPEGs (accurate IDCT) and PNGs in parallel without the GIL, bit-identical
to PIL there; CMYK JPEGs, GIFs, BMPs and files tf.io refuses go to the PIL decode of
rpsflax/pil_decode.py inside the same map. 'nearest' (Keras' flow_from_directory default)
gathers exactly the rows and columns PIL's NEAREST reads; the smooth methods use
tf.image.resize with antialiasing, within 1-2 levels of PIL's. Whole folders: `decode_files`;
uncached batches: `stream` (both as rpsflax/pil_decode.py's); TFDS splits: `read_tfds_split`.
"""

from __future__ import annotations  # tf.Tensor annotations without TensorFlow

import io
from typing import Iterator, Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from rpsflax import data_files, pil_decode, quiet

_CODES = {"jpeg": 0, "png": 1, "pil": 2}  # which decoder reads an image (ImageInfo.decoder)
DECODE_BATCH = 64

_tf_module = None
_tf_missing = None


def import_tensorflow():
  """TensorFlow, imported the first time the tf.data decoder or TFDS needs it (5-8 s on a CPU
  machine: a run decoding with PIL never pays it), or None where it does not import."""
  global _tf_module, _tf_missing
  if _tf_module is None and _tf_missing is None:
    # TensorFlow's C++ start-up lines (no CUDA driver, cuInit failed, CPU features) are not for
    # the user: rpsflax.quiet drops them and writes back anything else (RPSFLAX_VERBOSE=1: all).
    with quiet.native_stderr():
      try:
        import tensorflow  # noqa: PLC0415  (seconds; only the tf.data decoder and TFDS need it)
      except Exception as e:  # pylint: disable=broad-except  (ImportError, or a broken install)
        _tf_missing = f"{type(e).__name__}: {e}"
        return None
      try:
        tensorflow.config.set_visible_devices([], "GPU")  # cuInit's error on a CPU machine
      except RuntimeError as e:  # TF already initialised by someone else: say so, carry on
        logging.warning("could not hide GPUs from TensorFlow (%s); it may take GPU memory", e)
    _tf_module = tensorflow
  return _tf_module


def tensorflow_missing() -> Optional[str]:
  """Why TensorFlow does not import here (imports it to find out), or None."""
  import_tensorflow()
  return _tf_missing


class _LazyTensorFlow:
  """`tf` in this module: TensorFlow at first attribute use (see import_tensorflow)."""

  def __getattr__(self, name):
    module = import_tensorflow()
    if module is None:
      raise ImportError(f"TensorFlow does not import here ({_tf_missing})")
    return getattr(module, name)


tf = _LazyTensorFlow()


def decoder_codes(infos: Sequence[data_files.ImageInfo]) -> np.ndarray:
  """The `codes` of `decode_files`: which decoder reads each image (ImageInfo.decoder)."""
  return np.asarray([_CODES[info.decoder] for info in infos], np.int32).reshape(-1)


def _declared_pixels(data: tf.Tensor) -> tf.Tensor:
  """width x height (int64) from the header of encoded bytes, read before decoding (a file that
  changed since the scan is checked again). The format is sniffed from the bytes, not taken from
  the scan: JPEG, its SOF marker; PNG, the IHDR chunk (bytes 16-23, big-endian); else PIL."""
  def jpeg():
    shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
    return shape[0] * shape[1]

  def png():
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
    b = tf.ensure_shape(b, [8])
    word = lambda i: ((b[i] * 256 + b[i + 1]) * 256 + b[i + 2]) * 256 + b[i + 3]
    return word(0) * word(4)

  def pil():
    def pixels(d):
      with Image.open(io.BytesIO(d)) as im:
        return np.int64(im.width * im.height)
    return tf.reshape(tf.numpy_function(pixels, [data], tf.int64, stateful=False), [])
  head = tf.strings.substr(data, 0, 4)
  return tf.case([(tf.strings.substr(head, 0, 2) == b"\xff\xd8", jpeg),
                  (head == b"\x89PNG", png)], default=pil, exclusive=True)


def decode_image(data: tf.Tensor, code: tf.Tensor,
                 max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> tf.Tensor:
  """Encoded bytes -> uint8 [h, w, 3]; `code` picks the decoder (see ImageInfo.decoder).

  Fails (InvalidArgumentError) without decoding when the header declares more than `max_pixels`.
  """
  check = tf.debugging.assert_less_equal(
      _declared_pixels(data), tf.constant(int(max_pixels), tf.int64),
      message="the image declares more pixels than config.data.max_image_pixels")
  with tf.control_dependencies([check]):
    data = tf.identity(data)

  def jpeg():
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

  def png():
    return tf.io.decode_png(data, channels=3, dtype=tf.uint8)

  def pil():
    return tf.ensure_shape(tf.numpy_function(pil_decode.rgb, [data, max_pixels], tf.uint8,
                                             stateful=False), [None, None, 3])
  return tf.switch_case(tf.cast(code, tf.int32), [jpeg, png, pil])


def nearest_index(n_in, n_out):
  """Source rows PIL's NEAREST resize reads: x0 = s/2, x_k = x_{k-1} + s, floor (float64)."""
  s = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)
  steps = tf.concat([[s * 0.5], tf.fill([n_out - 1], s)], 0)
  return tf.minimum(tf.cast(tf.math.cumsum(steps), tf.int32), n_in - 1)


def resize_image(image: tf.Tensor, size: tuple[int, int], method: str = "nearest") -> tf.Tensor:
  """uint8 [h, w, 3] -> uint8 [size[0], size[1], 3], as PIL's Image.resize(method)."""
  h, w = size
  if method == "nearest":
    shape = tf.shape(image)
    image = tf.gather(image, nearest_index(shape[0], h), axis=0)
    image = tf.gather(image, nearest_index(shape[1], w), axis=1)
    return tf.ensure_shape(image, [h, w, 3])

  def smooth():
    out = tf.image.resize(image, (h, w), method=data_files.RESIZE_METHODS[method], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
  same = tf.reduce_all(tf.shape(image)[:2] == (h, w))  # Keras leaves such images untouched
  return tf.ensure_shape(tf.cond(same, lambda: image, smooth), [h, w, 3])


def load_resize(path, code, size, method, max_pixels=data_files.DEFAULT_MAX_IMAGE_PIXELS):
  """One file -> uint8 [size[0], size[1], 3], inside a tf.data map."""
  return resize_image(decode_image(tf.io.read_file(path), code, max_pixels), size, method)


def pil_load_resize(path: str, size, method,
                    max_pixels=data_files.DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
  """The slow, sure path for a file tf.io refused: PIL decode, same resize."""
  with open(path, "rb") as f:
    rgb = pil_decode.rgb(f.read(), max_pixels)
  return resize_image(tf.constant(rgb), size, method).numpy()


def decode_files(paths: np.ndarray, codes: np.ndarray, size, method, num_parallel_calls,
                 out: np.ndarray, desc: str = "decoding", progress_min: int = 2000,
                 max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> list[tuple[int, str]]:
  """Decode paths[i] into out[i] in a tf.data map, the files tf.io refuses with PIL; returns
  [(i, reason)] of files neither read."""
  n = len(paths)
  done = np.zeros(n, bool)
  ds = tf.data.Dataset.from_tensor_slices((np.arange(n), paths.astype(str), codes))
  ds = ds.map(lambda i, p, c: (i, load_resize(p, c, size, method, max_pixels)),
              num_parallel_calls=num_parallel_calls, deterministic=False)
  ds = ds.ignore_errors().batch(DECODE_BATCH).prefetch(2)
  with tqdm(total=n, desc=desc, unit="img", disable=n < progress_min) as bar:
    for idx, images in ds.as_numpy_iterator():
      out[idx] = images
      done[idx] = True
      bar.update(len(idx))
  failed = []
  for i in np.flatnonzero(~done):
    try:
      out[i] = pil_load_resize(str(paths[i]), size, method, max_pixels)
    except Exception as e:  # pylint: disable=broad-except
      failed.append((int(i), f"cannot decode: {e}"))
  return failed


def stream(paths: np.ndarray, codes: np.ndarray, labels: np.ndarray, idx: np.ndarray, size,
           method: str, num_parallel_calls: int,
           max_pixels: int = data_files.DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[dict]:
  """Uncached batches: row s of `idx` (-1 = padding) decoded in a tf.data map, in order; a batch
  holding a file tf.io refuses is decoded with PIL. The same dicts as pil_decode.stream."""
  b = idx.shape[1]
  zeros = tf.zeros((*size, 3), tf.uint8)

  def dataset(rows):
    flat = rows.reshape(-1)
    valid = flat >= 0
    take = np.where(valid, flat, 0)
    ds = tf.data.Dataset.from_tensor_slices(
        (paths[take].astype(str), codes[take], labels[take] * valid, valid))
    ds = ds.map(lambda p, c, l, v: {"image": tf.cond(v, lambda: load_resize(p, c, size, method,
                                                                            max_pixels),
                                                     lambda: zeros),
                                    "label": l, "mask": v},
                num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.batch(b, drop_remainder=True).prefetch(2)

  def pil_batch(row: np.ndarray) -> dict:
    return pil_decode.decode_batch(paths, labels, row, size,
                                   lambda p: pil_load_resize(p, size, method, max_pixels))

  step = 0
  while step < len(idx):
    try:
      for batch in dataset(idx[step:]).as_numpy_iterator():
        step += 1
        yield batch
    except tf.errors.OpError:  # a file tf.io refused: this batch through PIL, then go on
      yield pil_batch(idx[step])
      step += 1


def read_tfds_split(builder, split, size, method, num_parallel_calls):
  """Decode a whole TFDS split once: (uint8 [n,H,W,3] by example index, labels, failed idx)."""
  import tensorflow_datasets as tfds  # noqa: PLC0415  (optional; seconds to import)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})

  def load(i, ex):
    code = tf.where(tf.io.is_jpeg(ex["image"]), 0, 1)
    return i, resize_image(decode_image(ex["image"], code), size, method), ex["label"]
  n = int(ds.cardinality())
  if n < 0:  # unknown: count the records (labels only)
    n = sum(1 for _ in ds.map(lambda ex: ex["label"]).as_numpy_iterator())
  out = np.zeros((n, *size, 3), np.uint8)
  labels = np.zeros(n, np.int32)
  done = np.zeros(n, bool)
  ds = ds.enumerate().map(load, num_parallel_calls=num_parallel_calls, deterministic=False)
  for idx, imgs, lab in ds.ignore_errors().batch(DECODE_BATCH).prefetch(2).as_numpy_iterator():
    out[idx], labels[idx], done[idx] = imgs, lab, True
  return out, labels, np.flatnonzero(~done)

"""Small, untidy image folders for tests (no TensorFlow).

Real folders mix modes (RGBA, grayscale, palette, 16-bit PNGs), formats, sizes and broken
files; these helpers write such folders in a few milliseconds so any test can use them:

  write_image(path, size=(32, 32), mode='RGB', seed=0)      one image; format from the suffix
  write_broken(path, kind='truncated')                       one unreadable file (BROKEN_KINDS)
  class_folders(root, {'cat': 3, 'dog': 3}, untidy=True)     root/<class>/<class>_<i>.<ext>
  flat_folder(root, {'cat': 3, 'dog': 3}, sep='.')           root/<class><sep><i>.<ext> (Kaggle)
  broken_files(root, prefix='cat')                           one file of each broken kind
  image_array(size, seed)                                    the RGB content write_image uses
  png_bomb(path, 40000, 40000)                               a valid PNG of zeros: ~1.5 MB on
                                                             disk, 1.6 G pixels decoded
  lying_png(path, declared=(64, 64), actual=(32, 32))        a PNG whose header lies about its size
  nearest_gather(image, size)                                PIL's NEAREST resize as a NumPy gather

Images are smooth gradients plus noise, so resizing and decoding differences show up.
"""

import io
import itertools
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

# Modes (and formats) cycled through by `untidy=True`: each is one way real folders differ.
UNTIDY = (("RGB", ".jpg"), ("RGBA", ".png"), ("L", ".jpg"), ("P", ".png"), ("LA", ".png"),
          ("I;16", ".png"), ("RGB", ".png"), ("L", ".png"), ("CMYK", ".jpg"), ("P", ".gif"),
          ("RGB", ".bmp"), ("RGB", ".JPEG"))
UNTIDY_SIZES = ((32, 32), (40, 28), (24, 36), (64, 48), (17, 33))
BROKEN_KINDS = ("truncated", "corrupt", "zero", "text")


def image_array(size=(32, 32), seed=0) -> np.ndarray:
  """uint8 RGB [h, w, 3]: a seeded colour gradient plus noise."""
  h, w = size
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  base = rng.uniform(0, 255, 3)
  slope = rng.uniform(-4, 4, (2, 3))
  img = base + y[..., None] * slope[0] + x[..., None] * slope[1] + rng.normal(0, 12, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def _pil_image(rgb: np.ndarray, mode: str, seed: int) -> Image.Image:
  im = Image.fromarray(rgb, "RGB")
  if mode == "RGB":
    return im
  if mode == "RGBA":
    alpha = np.random.default_rng(seed + 1).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    im = im.convert("RGBA")
    im.putalpha(Image.fromarray(alpha, "L"))
    return im
  if mode == "I;16":
    gray = np.asarray(im.convert("L"), np.uint16) * 257 + 3
    return Image.fromarray(gray)  # mode I;16
  if mode == "P":
    return im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
  return im.convert(mode)  # L, LA, CMYK, 1


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}


def write_image(path, size=(32, 32), mode="RGB", seed=0) -> pathlib.Path:
  """Write one image of `mode` and (h, w) `size`; the format follows the suffix."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = _FORMATS[path.suffix.lower()]
  im = _pil_image(image_array(size, seed), mode, seed)
  kwargs = {"quality": 95} if fmt == "JPEG" else {}
  im.save(path, fmt, **kwargs)
  return path


def write_broken(path, kind="truncated") -> pathlib.Path:
  """Write a file with an image name that no decoder can read.

  truncated: a JPEG (or PNG) cut in half; corrupt: a PNG whose pixel data is scrambled;
  zero: an empty file; text: a text file named like an image.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if kind == "truncated":
    buf = io.BytesIO()
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(image_array((48, 48), 7)).save(buf, fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
  elif kind == "corrupt":
    buf = io.BytesIO()
    Image.fromarray(image_array((48, 48), 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 8
    data[start:start + 64] = bytes(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8))
    path.write_bytes(bytes(data))
  elif kind == "zero":
    path.write_bytes(b"")
  elif kind == "text":
    path.write_text("this is not an image, just a text file with an image name\n")
  else:
    raise ValueError(f"kind={kind!r}: use one of {BROKEN_KINDS}")
  return path


def _variant(i, untidy, ext, size):
  if not untidy:
    return "RGB", ext, size
  mode, vext = UNTIDY[i % len(UNTIDY)]
  return mode, vext, UNTIDY_SIZES[i % len(UNTIDY_SIZES)]


def class_folders(root, counts=None, *, ext=".png", size=(32, 32), untidy=False,
                  seed=0) -> list[pathlib.Path]:
  """root/<class>/<class>_<i><ext> for each class; returns the written paths (sorted)."""
  counts = counts or {"cat": 3, "dog": 3}
  root = pathlib.Path(root)
  out, k = [], itertools.count()
  for cls, n in counts.items():
    (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      j = next(k)
      mode, e, sz = _variant(j, untidy, ext, size)
      out.append(write_image(root / cls / f"{cls}_{i}{e}", sz, mode, seed + j))
  return sorted(out)


def flat_folder(root, counts=None, *, ext=".jpg", sep=".", size=(32, 32), untidy=False,
                seed=0) -> list[pathlib.Path]:
  """root/<class><sep><i><ext> (Kaggle's `cat.12.jpg` with sep='.'; `rock3.png` with sep='')."""
  counts = counts or {"cat": 3, "dog": 3}
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  out, k = [], itertools.count()
  for cls, n in counts.items():
    for i in range(n):
      j = next(k)
      mode, e, sz = _variant(j, untidy, ext, size)
      out.append(write_image(root / f"{cls}{sep}{i}{e}", sz, mode, seed + j))
  return sorted(out)


def broken_files(root, kinds=BROKEN_KINDS, *, prefix="cat", sep=".") -> dict[pathlib.Path, str]:
  """One unreadable file per kind in `root`, named like images of class `prefix`."""
  root = pathlib.Path(root)
  return {write_broken(root / f"{prefix}{sep}broken_{kind}.jpg", kind): kind for kind in kinds}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path, width: int = 40000, height: int = 40000) -> pathlib.Path:
  """A valid grayscale PNG of width x height zeros, written in milliseconds: one deflate block of
  zeros, flushed so that it stands alone, repeated (a real decompression bomb: every byte of the
  declared image is there to decode)."""
  raw = height * (width + 1)  # each row: filter byte 0, then the pixels
  rows_per_block = max(1, min(height, 4_000_000 // (width + 1)))
  block = rows_per_block * (width + 1)
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  body = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
  n, rest = divmod(raw, block)
  tail = zlib.compressobj(9, zlib.DEFLATED, -15)
  end = tail.compress(bytes(rest)) + tail.flush(zlib.Z_FINISH)
  adler = ((raw % 65521) << 16) | 1  # adler32 of `raw` zero bytes
  idat = b"\x78\xda" + body * n + end + struct.pack(">I", adler)
  png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
         + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(png)
  return path


def lying_png(path, declared=(64, 64), actual=(32, 32), seed=0) -> pathlib.Path:
  """A PNG of `actual` (h, w) pixels whose IHDR (CRC fixed) declares `declared`."""
  buf = io.BytesIO()
  Image.fromarray(image_array(actual, seed)).save(buf, "PNG")
  data = bytearray(buf.getvalue())
  ihdr = bytearray(data[12:29])  # b'IHDR' + 13 bytes
  ihdr[4:12] = struct.pack(">II", declared[1], declared[0])
  data[12:29] = ihdr
  data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(bytes(data))
  return path


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
  """Source rows PIL's NEAREST resize reads: x0 = s/2, x_k = x_{k-1} + s, floor (float64), as
  input_pipeline's TF resize computes them."""
  s = n_in / n_out
  steps = np.full(n_out, s, np.float64)
  steps[0] = s * 0.5
  return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)


def nearest_gather(image: np.ndarray, size) -> np.ndarray:
  """uint8 [h, w, 3] -> [size[0], size[1], 3]: the rows and columns PIL's NEAREST reads, gathered
  (how this project resized before PIL resized with the GIL released)."""
  h, w = size
  return image[nearest_index(image.shape[0], h)][:, nearest_index(image.shape[1], w)]

"""One image as Keras' `load_img` reads it, with PIL: decode, convert('RGB'), resize.

Shared by the TensorFlow-free decoders: threads (rpsflax/pil_decode.py) and worker processes
(rpsflax/decode_worker.py, which imports this module and PIL only, so a worker starts fast).
Everything here runs in PIL's C code with the GIL released, except opening the file and parsing
its header; 16-bit grey PNGs (tf.io keeps their high byte, README, Data) go through NumPy.
"""

import io

from PIL import Image

from rpsflax.errors import DataError

# Keras / config names -> PIL filters ('area' is PIL's box filter, an area average).
PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "area": Image.BOX, "lanczos": Image.LANCZOS, "lanczos3": Image.LANCZOS}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")  # PIL's modes for a 16-bit grey PNG


def rgb_image(data: bytes, max_pixels: int) -> Image.Image:
  """Encoded bytes -> an RGB PIL image, as tf.io / Keras' load_img decode them. The header's
  size is checked against `max_pixels` (config.data.max_image_pixels) before decoding."""
  try:
    im = Image.open(io.BytesIO(data))  # over bytes: no file to close; the header only so far
  except Image.UnidentifiedImageError:  # its message names a BytesIO object, not the file
    raise ValueError("not an image (PIL cannot identify the file)") from None
  except Image.DecompressionBombError as e:  # PIL's own limit, above any allowed max_pixels
    raise ValueError(f"declares too many pixels, over config.data.max_image_pixels="
                     f"{int(max_pixels)} ({e})") from e
  if im.width * im.height > int(max_pixels):
    raise ValueError(f"declares {im.width}x{im.height} pixels, over "
                     f"config.data.max_image_pixels={int(max_pixels)}")
  if im.format == "PNG" and im.mode in SIXTEEN_BIT:  # tf.io keeps the high byte
    import numpy as np  # noqa: PLC0415  (only here: a decoding worker starts without NumPy)
    grey = (np.asarray(im, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")
  if im.mode != "RGB":  # what load_img does
    return im.convert("RGB")
  im.load()  # PIL releases the GIL while it decodes
  return im


def resize_image(im: Image.Image, size, method: str = "nearest") -> Image.Image:
  """An RGB PIL image resized to (h, w) = `size` as Keras' load_img does: PIL's own filter,
  nothing done when the size already is `size`."""
  h, w = size
  if method not in PIL_FILTERS:
    raise DataError(f"config.data.resize_method={method!r} needs TensorFlow (not importable "
                    f"here): use one of {sorted(PIL_FILTERS)}")
  if im.size == (w, h):  # Keras leaves such images untouched
    return im
  return im.resize((w, h), PIL_FILTERS[method])


def load_image(path: str, size, method: str, max_pixels: int) -> Image.Image:
  """One file -> an RGB PIL image of (h, w) = `size`: no full-size array is ever made."""
  with open(path, "rb") as f:
    data = f.read()
  return resize_image(rgb_image(data, max_pixels), size, method)

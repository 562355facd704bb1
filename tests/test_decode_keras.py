"""Decoding parity with Keras itself, on images written here (needs nothing from ../shared;
issue 16, item 4).

Every mode the README lists (RGB, RGBA, LA, L, P with and without transparency, CMYK JPEG, GIF,
BMP, an EXIF-rotated JPEG) goes through the project's decoder (`input_pipeline.load_images`: TF
for RGB/grey JPEGs and PNGs, PIL for the rest) and through `keras.utils.load_img` +
`img_to_array`, at the native size and resized ('nearest', flow_from_directory's default): the
pixels must be identical. The one documented difference, 16-bit PNGs (README, Data: Keras' PIL
saturates them to white, we keep the high byte), is asserted as such.
"""

import io

import numpy as np
import pytest
from PIL import Image

import data_factory
from rpsflax import input_pipeline as ip

SIZE = (37, 45)  # h, w of every written image
TARGETS = (SIZE, (24, 24), (64, 50))


def _rgb(seed=0):
  return data_factory.image_array(SIZE, seed)


def _write(path, im, fmt, **kw):
  im.save(path, fmt, **kw)
  return path


def _palette(seed):
  return Image.fromarray(_rgb(seed)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)


def _exif_rotated(path):
  """A JPEG whose EXIF says 'rotate 90 CW' (orientation 6); neither Keras nor we apply it."""
  im = Image.fromarray(_rgb(9))
  exif = Image.Exif()
  exif[0x0112] = 6
  return _write(path, im, "JPEG", quality=95, exif=exif.tobytes())


def write_all(d):
  rgb = Image.fromarray(_rgb())
  rgba = rgb.convert("RGBA")
  rgba.putalpha(Image.fromarray(np.random.default_rng(1).integers(0, 256, SIZE, np.uint8)))
  p_transparent = _palette(5)
  p_transparent.info["transparency"] = 3
  files = {
      "rgb.jpg": _write(d / "rgb.jpg", rgb, "JPEG", quality=90),
      "rgb_progressive.jpg": _write(d / "rgb_progressive.jpg", rgb, "JPEG", progressive=True),
      "rgb.png": _write(d / "rgb.png", rgb, "PNG"),
      "rgba.png": _write(d / "rgba.png", rgba, "PNG"),
      "la.png": _write(d / "la.png", rgba.convert("LA"), "PNG"),
      "l.png": _write(d / "l.png", rgb.convert("L"), "PNG"),
      "l.jpg": _write(d / "l.jpg", rgb.convert("L"), "JPEG", quality=90),
      "p.png": _write(d / "p.png", _palette(4), "PNG"),
      "p_transparent.png": _write(d / "p_transparent.png", p_transparent, "PNG",
                                  transparency=3),
      "p.gif": _write(d / "p.gif", _palette(6), "GIF"),
      "p_transparent.gif": _write(d / "p_transparent.gif", _palette(7), "GIF", transparency=2),
      "cmyk.jpg": _write(d / "cmyk.jpg", rgb.convert("CMYK"), "JPEG", quality=90),
      "rgb.bmp": _write(d / "rgb.bmp", rgb, "BMP"),
      "p.bmp": _write(d / "p.bmp", _palette(8), "BMP"),
      "exif_rotated.jpg": _exif_rotated(d / "exif_rotated.jpg"),
  }
  return files


EXPECTED_MODES = {"rgb.jpg": "RGB", "rgb_progressive.jpg": "RGB", "rgb.png": "RGB",
                  "rgba.png": "RGBA", "la.png": "LA", "l.png": "L", "l.jpg": "L", "p.png": "P",
                  "p_transparent.png": "P", "p.gif": "P", "p_transparent.gif": "P",
                  "cmyk.jpg": "CMYK", "rgb.bmp": "RGB", "p.bmp": "P", "exif_rotated.jpg": "RGB"}


def keras_pixels(path, size):
  import keras

  img = keras.utils.load_img(path, target_size=size, interpolation="nearest")
  arr = keras.utils.img_to_array(img)  # float32 [h, w, 3]
  assert arr.shape == (*size, 3) and np.all(arr == np.round(arr))
  return arr.astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("modes")
  files = write_all(d)
  for name, path in files.items():  # the files really are what their names say
    with Image.open(path) as im:
      assert im.mode == EXPECTED_MODES[name], (name, im.mode)
      if "transparent" in name:
        assert "transparency" in im.info, name
  with Image.open(files["exif_rotated.jpg"]) as im:
    assert im.getexif().get(0x0112) == 6
  return files


@pytest.mark.parametrize("decoder", ["pil", "tf"])
@pytest.mark.parametrize("size", TARGETS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_mode_decodes_as_keras_load_img(files, size, decoder):
  """Both decoders (config.data.decoder): tf.data hands what tf.io does not read (CMYK JPEGs,
  GIFs, BMPs) to the PIL decode the TF-free decoder uses."""
  paths = list(files.values())
  images, ok, skipped = ip.load_images(paths, size, "nearest", decoder=decoder)
  assert not skipped and ok == [str(p) for p in paths]
  assert len(images) == len(paths)
  for img, (name, path) in zip(images, files.items(), strict=True):
    np.testing.assert_array_equal(img, keras_pixels(path, size), err_msg=f"{name} at {size}")


def test_sixteen_bit_png_keeps_the_high_byte_where_keras_saturates(tmp_path):
  """The one deliberate difference (README, Data): Keras' PIL clips 16-bit grey to 255."""
  gray8 = np.asarray(Image.fromarray(_rgb(3)).convert("L"), np.uint16)
  path = tmp_path / "gray16.png"
  Image.fromarray(gray8 * 257 + 3).save(path)  # 16-bit: value v*257+3, high byte v
  with Image.open(path) as im:
    assert im.mode == "I;16"
  images, ok, skipped = ip.load_images([path], SIZE, "nearest")
  assert not skipped
  want = np.repeat(gray8.astype(np.uint8)[..., None], 3, -1)
  np.testing.assert_array_equal(images[0], want)  # ours: the high byte, in all three channels
  theirs = keras_pixels(path, SIZE)
  assert (theirs == 255).mean() > 0.95, "Keras no longer saturates 16-bit PNGs: update README"
  assert not np.array_equal(images[0], theirs)


def test_readme_states_the_sixteen_bit_difference():
  import pathlib

  readme = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
  assert "16-bit PNG" in readme and "high byte" in readme  # (the README's Data, since issue 24)


def test_exif_orientation_is_ignored_as_keras_does(files):
  """load_img does not apply EXIF orientation: neither do we (the pixels as stored)."""
  images, _, _ = ip.load_images([files["exif_rotated.jpg"]], SIZE, "nearest")
  stored = np.asarray(Image.open(io.BytesIO(files["exif_rotated.jpg"].read_bytes())).convert("RGB"))
  np.testing.assert_array_equal(images[0], stored)

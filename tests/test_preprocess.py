"""rpsflax.preprocess against Keras' own transforms, to float32 rounding."""

import numpy as np
import pytest

import keras_reference as kr
from rpsflax.preprocess import get_preprocessor, rescale, vgg16_preprocess

ULP_256 = float(np.spacing(np.float32(256)))  # one float32 step at the largest |value| here


@pytest.fixture(scope="module")
def keras_vgg16_preprocess():
  return kr.keras().applications.vgg16.preprocess_input


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return {
      "uint8": rng.integers(0, 256, (2, 7, 5, 3), dtype=np.uint8),
      "float32": rng.uniform(0, 255, (2, 7, 5, 3)).astype(np.float32),
      "float64": rng.uniform(0, 255, (2, 7, 5, 3)),
  }


@pytest.mark.parametrize("kind", ["uint8", "float32", "float64"])
def test_vgg16_preprocess_matches_keras(keras_vgg16_preprocess, images, kind):
  x = images[kind]
  want = np.asarray(keras_vgg16_preprocess(x.copy()), np.float64)  # it works in place
  got = np.asarray(vgg16_preprocess(x))
  assert got.dtype == np.float32 and got.shape == x.shape
  err = np.abs(got - want).max()
  print(f"vgg16_preprocess {kind}: max |err| {err:.2e} (1 ulp at 256 = {ULP_256:.2e})")
  # uint8 and float32 are bit-exact; float64 input differs by its rounding to float32.
  assert err <= (0 if kind != "float64" else ULP_256)


def test_vgg16_preprocess_is_bgr_minus_mean():
  """A pure red pixel: caffe mode moves it to the last channel and removes the BGR mean."""
  x = np.zeros((1, 1, 1, 3), np.uint8)
  x[..., 0] = 255
  got = np.asarray(vgg16_preprocess(x))[0, 0, 0]
  np.testing.assert_allclose(got, [-103.939, -116.779, 255 - 123.68], rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_rescale_is_float32_multiply(images, kind):
  x = images[kind]
  got = np.asarray(rescale(x))
  np.testing.assert_array_equal(got, x.astype(np.float32) * np.float32(1 / 255))


def test_rescale_matches_image_data_generator():
  from keras.src.legacy.preprocessing.image import ImageDataGenerator
  every = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), 3, axis=-1)
  want = ImageDataGenerator(rescale=1.0 / 255).standardize(every.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(rescale(every)), want)
  # A division rounds differently for some values, so this test tells the two apart.
  assert not np.array_equal((every / 255).astype(np.float32), want)


def test_get_preprocessor_names():
  assert get_preprocessor("vgg16") is vgg16_preprocess
  assert get_preprocessor("rescale") is rescale
  with pytest.raises(ValueError, match="config.preprocess"):
    get_preprocessor("caffe")

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


@pytest.mark.parametrize("kind", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v2"])
def test_backbone_preprocess_matches_keras(images, kind, backbone):
  """resnet50 ('caffe' mode) and mobilenet_v2 ('tf' mode) against Keras' own preprocess_input."""
  keras_fn = getattr(kr.keras().applications, backbone).preprocess_input
  x = images[kind]
  want = np.asarray(keras_fn(x.copy()), np.float64)
  got = np.asarray(get_preprocessor(backbone)(x))
  assert got.dtype == np.float32 and got.shape == x.shape
  err = np.abs(got - want).max()
  print(f"{backbone} {kind}: max |err| {err:.2e}")
  assert err <= (0 if kind != "float64" else ULP_256)


def test_mobilenet_v2_preprocess_every_pixel_value_bit_exact():
  """All 256 uint8 values: a division by 127.5, not a multiply by its reciprocal, as Keras."""
  every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  want = kr.keras().applications.mobilenet_v2.preprocess_input(every.copy())
  got = np.asarray(get_preprocessor("mobilenet_v2")(every))
  np.testing.assert_array_equal(got, want)
  assert got.min() == -1.0 and got.max() == 1.0
  # A multiply by float32(1/127.5) rounds differently for some values: this test tells them apart.
  assert not np.array_equal(every.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1), want)


def test_mobilenet_v2_preprocess_bit_exact_inside_jit():
  """Inside a jit-compiled step (where XLA would fold a constant divisor) it stays exact."""
  import jax
  every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  want = kr.keras().applications.mobilenet_v2.preprocess_input(every.copy())
  got = jax.jit(lambda x: get_preprocessor("mobilenet_v2")(x) * 2.0)(every)
  np.testing.assert_array_equal(np.asarray(got), want * np.float32(2))

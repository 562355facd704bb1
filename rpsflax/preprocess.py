"""Framework-exact input transforms, in JAX (no TensorFlow), by Keras' preprocessing mode.

'caffe' (`vgg16_preprocess`) equals keras.applications.vgg16.preprocess_input: RGB -> BGR and
subtract the ImageNet BGR mean, no scaling; keras.applications.resnet50's preprocess_input is the
same mode (`resnet50_preprocess`).
'tf' (`mobilenet_v2_preprocess`) equals keras.applications.mobilenet_v2.preprocess_input:
x / 127.5 - 1 in float32, a division as NumPy does it in Keras, so [0, 255] -> [-1, 1] bit for
bit. 'rescale' equals ImageDataGenerator(rescale=1./255): a float32 multiply by float32(1/255),
not a division, so the rounding matches Keras bit for bit.

config.preprocess names a backbone (its spec's `preprocess_mode`, as Keras pairs each
application with its preprocess_input), 'rescale' or 'none'.
"""

import jax
import jax.numpy as jnp
import numpy as np

from rpsflax import models

IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_ONE_OVER_255 = np.float32(1.0 / 255.0)
_127_5, _ONE = np.float32(127.5), np.float32(1.0)


def vgg16_preprocess(images, dtype=jnp.float32):
  """uint8 or float RGB (..., 3) in [0, 255] -> float BGR with the ImageNet mean removed."""
  x = jnp.asarray(images, jnp.float32)
  x = x[..., ::-1] - IMAGENET_BGR_MEAN
  return x.astype(dtype)


resnet50_preprocess = vgg16_preprocess  # both are imagenet_utils.preprocess_input(mode='caffe')


def mobilenet_v2_preprocess(images, dtype=jnp.float32):
  """uint8 or float RGB in [0, 255] -> [-1, 1], as Keras' 'tf' mode (x /= 127.5; x -= 1).

  XLA rewrites a division by a constant (or by a broadcast scalar, on CPU) into a multiply by
  its reciprocal, which rounds differently for about half the pixel values. Dividing by a full
  array of 127.5 that XLA cannot see through (an optimization barrier) keeps the true IEEE
  division, so the result equals NumPy's in Keras bit for bit.
  """
  x = jnp.asarray(images, jnp.float32)
  divisor = jax.lax.optimization_barrier(jnp.full(x.shape, _127_5, jnp.float32))
  return (x / divisor - _ONE).astype(dtype)


def rescale(images, dtype=jnp.float32):
  """uint8 or float RGB in [0, 255] -> [0, 1], as Keras' rescale=1./255."""
  return (jnp.asarray(images, jnp.float32) * _ONE_OVER_255).astype(dtype)


def identity(images, dtype=jnp.float32):
  return jnp.asarray(images, jnp.float32).astype(dtype)


# Keras' preprocessing modes (imagenet_utils.preprocess_input's `mode`, plus the tutorials' 1/255).
MODES = {"caffe": vgg16_preprocess, "tf": mobilenet_v2_preprocess, "rescale": rescale,
         "none": identity}
# config.preprocess -> its mode: each Keras application's own, 'rescale', 'none' (config_check
# reads the names).
PREPROCESS_MODES = {**{n: s.preprocess_mode for n, s in models.REGISTRY.items()
                       if s.keras_application},
                    "rescale": "rescale", "none": "none"}
PREPROCESSORS = {name: MODES[mode] for name, mode in PREPROCESS_MODES.items()}


def get_preprocessor(name: str):
  if name not in PREPROCESSORS:
    raise ValueError(f"config.preprocess={name!r}: use one of {sorted(PREPROCESSORS)}")
  return PREPROCESSORS[name]

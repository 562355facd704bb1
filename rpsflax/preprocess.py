"""Framework-exact input transforms, in JAX (no TensorFlow).

`vgg16_preprocess` equals keras.applications.vgg16.preprocess_input ('caffe' mode):
RGB -> BGR and subtract the ImageNet BGR mean, no scaling. `rescale` equals
ImageDataGenerator(rescale=1./255): a float32 multiply by float32(1/255), not a division,
so the rounding matches Keras bit for bit.
"""

import jax.numpy as jnp
import numpy as np

IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_ONE_OVER_255 = np.float32(1.0 / 255.0)


def vgg16_preprocess(images, dtype=jnp.float32):
  """uint8 or float RGB (..., 3) in [0, 255] -> float BGR with the ImageNet mean removed."""
  x = jnp.asarray(images, jnp.float32)
  x = x[..., ::-1] - IMAGENET_BGR_MEAN
  return x.astype(dtype)


def rescale(images, dtype=jnp.float32):
  """uint8 or float RGB in [0, 255] -> [0, 1], as Keras' rescale=1./255."""
  return (jnp.asarray(images, jnp.float32) * _ONE_OVER_255).astype(dtype)


def identity(images, dtype=jnp.float32):
  return jnp.asarray(images, jnp.float32).astype(dtype)


PREPROCESSORS = {"vgg16": vgg16_preprocess, "rescale": rescale, "none": identity}


def get_preprocessor(name: str):
  if name not in PREPROCESSORS:
    raise ValueError(f"config.preprocess={name!r}: use one of {sorted(PREPROCESSORS)}")
  return PREPROCESSORS[name]

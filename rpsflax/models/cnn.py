"""The cats-vs-dogs convnet of the Keras tutorial, conv stack only.

Keras' Sequential model is Conv/MaxPool x4 -> Flatten -> Dropout -> Dense(512) -> Dense(1).
Here the conv stack plus Flatten is the backbone; Dropout and the dense layers are a
`Head(pooling='flatten', dropout=0.5, hidden=(512,), num_classes=1)`. Layer names are the
ones Keras gives a fresh Sequential model (conv2d, conv2d_1, ...), so a file saved by the
tutorial converts by name.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpsflax.models.layers import ConvReLU
from rpsflax.models.spec import BackboneSpec

CNN_FILTERS = (32, 64, 128, 128)


def cnn_conv_names() -> list[str]:
  return ["conv2d" if i == 0 else f"conv2d_{i}" for i in range(len(CNN_FILTERS))]


class CatsDogsCNN(nn.Module):
  """Four 3x3 'valid' conv + 2x2 max-pool stages; returns the last feature map (NHWC)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, self.dtype)
    for i, (filters, name) in enumerate(zip(CNN_FILTERS, cnn_conv_names())):
      # Keras MaxPooling2D(2) floors odd sizes ('valid'), e.g. 148 -> 74, 72 -> 36, 34 -> 17, 15 -> 7.
      x = ConvReLU(filters, padding="VALID", pool=True, dtype=self.dtype, name=name)(x)
      # Keras' name of the pool layer (a conv's name here clashes with the conv's own scope).
      self.sow("intermediates", "max_pooling2d" + (f"_{i}" if i else ""), x)
    return x


def _min_size() -> int:
  size = 1
  for _ in CNN_FILTERS:  # undo MaxPool(2) then a 3x3 'valid' conv, stage by stage
    size = 2 * size + 2
  return size


SPEC = BackboneSpec(
    name="cnn",
    build=lambda include_top=False, alpha=1.0, dtype=jnp.float32, bn_training=(): CatsDogsCNN(
        dtype=dtype),
    layer_names=lambda include_top=False, alpha=1.0: cnn_conv_names(),
    min_size=_min_size(),
    preprocess_mode="rescale",
    # A file saved by the tutorial's Sequential model holds its dense layers too.
    head_layers={"dense": "hidden_0", "dense_1": "predictions"},
)

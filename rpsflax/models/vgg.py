"""VGG16 with Keras' layer names, so converted Keras weights map one to one.

Input is NHWC and already preprocessed (see `rpsflax.preprocess.vgg16_preprocess`).
Every pooling output is sown into the 'intermediates' collection under its Keras
name (block1_pool ... block5_pool), which is what the parity tests compare.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpsflax.models.layers import max_pool_2x2

# (block, number of 3x3 convs, filters), as keras.applications.vgg16 builds them.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG16_TOP = ("fc1", "fc2", "predictions")


def vgg16_layer_names(include_top: bool = False) -> list[str]:
  """Keras' names of VGG16's layers that hold weights, in order."""
  names = [f"block{b}_conv{i}" for b, n, _ in VGG16_BLOCKS for i in range(1, n + 1)]
  return names + (list(VGG16_TOP) if include_top else [])


class VGG16(nn.Module):
  """keras.applications.VGG16 as a Flax module.

  With `include_top=False` it returns the block5_pool feature map (N, H/32, W/32, 512);
  with `include_top=True` (224x224 inputs) it returns class probabilities like Keras
  (softmax over `num_classes`).
  """

  include_top: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, self.dtype)
    for block, convs, filters in VGG16_BLOCKS:
      for i in range(1, convs + 1):
        x = nn.Conv(filters, (3, 3), padding="SAME", dtype=self.dtype,
                    name=f"block{block}_conv{i}")(x)
        x = nn.relu(x)
      x = max_pool_2x2(x)
      self.sow("intermediates", f"block{block}_pool", x)
    if not self.include_top:
      return x
    x = x.reshape((x.shape[0], -1))  # row-major over (H, W, C), as Keras' Flatten
    x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc1")(x))
    x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc2")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="predictions")(x)
    return nn.softmax(x.astype(jnp.float32))

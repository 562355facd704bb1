"""VGG16 with Keras' layer names, so converted Keras weights map one to one.

Input is NHWC and already preprocessed (see `rpsflax.preprocess.vgg16_preprocess`).
Every pooling output is sown into the 'intermediates' collection under its Keras
name (block1_pool ... block5_pool), which is what the parity tests compare.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpsflax.models.layers import ConvReLU
from rpsflax.models.spec import BackboneSpec, Release

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
        x = ConvReLU(filters, pool=i == convs, dtype=self.dtype, name=f"block{block}_conv{i}")(x)
      self.sow("intermediates", f"block{block}_pool", x)
    if not self.include_top:
      return x
    x = x.reshape((x.shape[0], -1))  # row-major over (H, W, C), as Keras' Flatten
    x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc1")(x))
    x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc2")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="predictions")(x)
    return nn.softmax(x.astype(jnp.float32))


# The official Keras release files, as in keras/src/applications/vgg16.py: {include_top: (file
# name, URL, md5)}.
_RELEASE_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
VGG16_RELEASES = {
    False: ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            _RELEASE_BASE + "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "6d6bbae143d832006294945121d1f1fc"),
    True: ("vgg16_weights_tf_dim_ordering_tf_kernels.h5",
           _RELEASE_BASE + "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
           "64373286793e3c8b2b4e3219cbf3544b"),
}


def vgg16_release(include_top: bool = False, image_size: int = 224, alpha: float = 1.0) -> Release:
  """Keras' VGG16 ImageNet file (one per top; any input size)."""
  fname, url, md5 = VGG16_RELEASES[bool(include_top)]
  return Release("vgg16", bool(include_top), fname, url, md5,
                 "vgg16" if include_top else "vgg16_notop")


SPEC = BackboneSpec(
    name="vgg16",
    build=lambda include_top=False, alpha=1.0, dtype=jnp.float32, bn_training=(): VGG16(
        include_top=include_top, dtype=dtype),
    layer_names=lambda include_top=False, alpha=1.0: vgg16_layer_names(include_top),
    min_size=32,  # five 2x2 pools
    preprocess_mode="caffe",
    keras_application="VGG16",
    release=vgg16_release,
    top_size=224,  # fc1 is built for 7x7x512 features
)

"""ResNet50 (v1) with Keras' layer names, so converted Keras weights map one to one.

keras.applications.ResNet50 as a Flax module: NHWC input already caffe-preprocessed (see
`rpsflax.preprocess.resnet50_preprocess`), every Conv2D with a bias, every BatchNormalization with
epsilon 1.001e-5 and Keras' default momentum 0.99, the stride of a downsampling block on its first
1x1 conv (Keras' `residual_block_v1`). The output of each stage is sown into 'intermediates' under
its Keras name (conv1_relu, pool1_pool, conv2_block3_out ... conv5_block3_out), which is what the
parity tests compare.

BatchNorm: a layer runs in Keras' training mode (batch statistics, moving statistics updated) only
when the module is called with `train=True` AND its name is in `bn_training`; otherwise it uses
its moving statistics, as a Keras BatchNormalization layer with `trainable=False`, or any BN
layer under `base_model(x, training=False)`, does.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from rpsflax.models.layers import BatchNorm
from rpsflax.models.spec import BackboneSpec, Release

# (stage, bottleneck filters, blocks, stride of the first block), as keras ResNet50's stack_fn.
RESNET50_STAGES = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))
RESNET_BN_EPSILON = 1.001e-5
RESNET_BN_MOMENTUM = 0.99


def _block_names(stage, block):
  """Weighted layers of one residual block, in Keras' (topological) layer order."""
  p = f"conv{stage}_block{block}"
  if block == 1:  # the shortcut conv and BN come in between the residual branch's layers
    return [f"{p}_1_conv", f"{p}_1_bn", f"{p}_2_conv", f"{p}_2_bn", f"{p}_0_conv", f"{p}_3_conv",
            f"{p}_0_bn", f"{p}_3_bn"]
  return [f"{p}_{i}_{kind}" for i in (1, 2, 3) for kind in ("conv", "bn")]


def resnet50_layer_names(include_top: bool = False) -> list[str]:
  """Keras' names of ResNet50's layers that hold weights, in Keras' layer order."""
  names = ["conv1_conv", "conv1_bn"]
  for stage, _, blocks, _ in RESNET50_STAGES:
    for block in range(1, blocks + 1):
      names += _block_names(stage, block)
  return names + (["predictions"] if include_top else [])


def resnet50_stage_names() -> list[str]:
  """Keras' names of the layers whose outputs end each stage."""
  return ["conv1_relu", "pool1_pool"] + [f"conv{s}_block{b}_out" for s, _, b, _ in RESNET50_STAGES]


def resnet50_bn_names() -> list[str]:
  return [n for n in resnet50_layer_names() if n.endswith("_bn")]


class ResNet50(nn.Module):
  """keras.applications.ResNet50 as a Flax module.

  With `include_top=False` it returns the conv5_block3_out feature map (N, H/32, W/32, 2048);
  with `include_top=True` the global average pool ('avg_pool') and the softmax 'predictions' over
  `num_classes`, as Keras.
  """

  include_top: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32, BN computes in float32
  bn_training: Sequence[str] = ()  # BN layers in training mode when train=True (see module doc)

  def _bn(self, x, name, train):
    bn = BatchNorm(momentum=RESNET_BN_MOMENTUM, epsilon=RESNET_BN_EPSILON, dtype=self.dtype,
                   name=name)
    return bn(x, use_running_average=not (train and name in self.bn_training))

  def _conv(self, x, filters, kernel, name, strides=1, padding="SAME"):
    return nn.Conv(filters, (kernel, kernel), strides=(strides, strides), padding=padding,
                   dtype=self.dtype, name=name)(x)

  def _block(self, x, filters, stride, shortcut_conv, name, train):
    if shortcut_conv:
      shortcut = self._conv(x, 4 * filters, 1, f"{name}_0_conv", stride, "VALID")
      shortcut = self._bn(shortcut, f"{name}_0_bn", train)
    else:
      shortcut = x
    x = self._conv(x, filters, 1, f"{name}_1_conv", stride, "VALID")
    x = nn.relu(self._bn(x, f"{name}_1_bn", train))
    x = self._conv(x, filters, 3, f"{name}_2_conv")
    x = nn.relu(self._bn(x, f"{name}_2_bn", train))
    x = self._conv(x, 4 * filters, 1, f"{name}_3_conv", 1, "VALID")
    x = self._bn(x, f"{name}_3_bn", train)
    return nn.relu(shortcut + x)  # {name}_add, then {name}_out

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))  # conv1_pad
    x = self._conv(x, 64, 7, "conv1_conv", 2, "VALID")
    x = nn.relu(self._bn(x, "conv1_bn", train))
    self.sow("intermediates", "conv1_relu", x)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # pool1_pad: zeros, as Keras' ZeroPadding2D
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    self.sow("intermediates", "pool1_pool", x)
    for stage, filters, blocks, stride in RESNET50_STAGES:
      for block in range(1, blocks + 1):
        x = self._block(x, filters, stride if block == 1 else 1, block == 1,
                        f"conv{stage}_block{block}", train)
      self.sow("intermediates", f"conv{stage}_block{blocks}_out", x)
    if not self.include_top:
      return x
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # avg_pool
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="predictions")(x)
    return nn.softmax(x.astype(jnp.float32))


# The official Keras release files, as in keras/src/applications/resnet.py: {include_top: ...}.
RESNET_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
RESNET50_FILES = {False: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                  True: "resnet50_weights_tf_dim_ordering_tf_kernels.h5"}
RESNET50_MD5 = {False: "4d473c1dd8becc155b73f8504c6f6626", True: "2cb95161c43110f7111970584f804107"}


def resnet50_release(include_top: bool = False, image_size: int = 224,
                     alpha: float = 1.0) -> Release:
  """Keras' ResNet50 ImageNet file (one per top; any input size)."""
  top = bool(include_top)
  return Release("resnet50", top, RESNET50_FILES[top], RESNET_BASE + RESNET50_FILES[top],
                 RESNET50_MD5[top], "resnet50" if top else "resnet50_notop")


SPEC = BackboneSpec(
    name="resnet50",
    build=lambda include_top=False, alpha=1.0, dtype=jnp.float32, bn_training=(): ResNet50(
        include_top=include_top, dtype=dtype, bn_training=tuple(bn_training)),
    layer_names=lambda include_top=False, alpha=1.0: resnet50_layer_names(include_top),
    min_size=32,  # Keras' min_size
    preprocess_mode="caffe",
    takes_train=True,
    bn_names=lambda alpha=1.0: resnet50_bn_names(),
    keras_application="ResNet50",
    release=resnet50_release,
)

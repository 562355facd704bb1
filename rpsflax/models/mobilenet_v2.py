"""MobileNetV2 with Keras' layer names, so converted Keras weights map one to one.

keras.applications.MobileNetV2 as a Flax module, for every width `alpha` Keras has: NHWC input
already scaled to [-1, 1] (see `rpsflax.preprocess.mobilenet_v2_preprocess`), no conv biases,
BatchNormalization with epsilon 1e-3 and momentum 0.999, ReLU6. Depthwise convolutions hold
Flax's grouped-conv kernel layout (3, 3, 1, C) (the converter reshapes Keras' (3, 3, C, 1)) and
run as nine fused multiply-adds (`layers.DepthwiseConv3x3`). A stride-2 depthwise conv is preceded by Keras' `correct_pad`
zero padding and is 'valid'; a stride-1 one is 'same'.

The output of every block and of the stem and last conv is sown into 'intermediates' under its
Keras name (Conv1_relu, expanded_conv_project_BN, block_1_project_BN, block_2_add, ...,
out_relu). BatchNorm modes as in `rpsflax.models.resnet`: training mode only with `train=True`
for the layers named in `bn_training`.
"""

from collections.abc import Mapping
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from rpsflax.errors import WeightsError
from rpsflax.models.layers import BatchNorm, DepthwiseConv3x3
from rpsflax.models.spec import BackboneSpec, Release

# (filters, stride, expansion) of blocks 0..16, as keras MobileNetV2 calls _inverted_res_block.
MOBILENET_V2_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_BN_EPSILON = 1e-3
MOBILENET_BN_MOMENTUM = 0.999


def make_divisible(v, divisor=8, min_value=None):
  """Keras' _make_divisible: round to a multiple of `divisor`, never more than 10% down."""
  if min_value is None:
    min_value = divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def _prefix(block_id):
  return f"block_{block_id}_" if block_id else "expanded_conv_"


def _block_plan(alpha):
  """[(block id, prefix, in channels, out channels, stride, expansion)]."""
  plan, channels = [], make_divisible(32 * alpha, 8)
  for block_id, (filters, stride, expansion) in enumerate(MOBILENET_V2_BLOCKS):
    out = make_divisible(int(filters * alpha), 8)
    plan.append((block_id, _prefix(block_id), channels, out, stride, expansion))
    channels = out
  return plan


def last_conv_filters(alpha) -> int:
  return make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280


def mobilenet_v2_layer_names(include_top: bool = False, alpha: float = 1.0) -> list[str]:
  """Keras' names of MobileNetV2's layers that hold weights, in Keras' layer order."""
  names = ["Conv1", "bn_Conv1"]
  for block_id, p, *_ in _block_plan(alpha):
    if block_id:
      names += [f"{p}expand", f"{p}expand_BN"]
    names += [f"{p}depthwise", f"{p}depthwise_BN", f"{p}project", f"{p}project_BN"]
  names += ["Conv_1", "Conv_1_bn"]
  return names + (["predictions"] if include_top else [])


def mobilenet_v2_stage_names(alpha: float = 1.0) -> list[str]:
  """Keras' names of the layers whose outputs end the stem, each block and the last conv."""
  names = ["Conv1_relu"]
  for _, p, cin, cout, stride, _ in _block_plan(alpha):
    names.append(f"{p}add" if cin == cout and stride == 1 else f"{p}project_BN")
  return names + ["out_relu"]


def mobilenet_v2_bn_names(alpha: float = 1.0) -> list[str]:
  """Keras' names of the BatchNormalization layers (bn_Conv1, *_BN, Conv_1_bn)."""
  return [n for n in mobilenet_v2_layer_names(False, alpha)
          if n == "bn_Conv1" or n.endswith(("_BN", "_bn"))]


def mobilenet_v2_depthwise_names(alpha: float = 1.0) -> list[str]:
  return [n for n in mobilenet_v2_layer_names(False, alpha) if n.endswith("depthwise")]


def stage_outputs(intermediates) -> dict:
  """{Keras layer name: output} from the 'intermediates' collection of a MobileNetV2 apply."""
  out = {}
  for name, value in intermediates.items():
    out[name] = value["output"][0] if isinstance(value, Mapping) else value[0]
  return out


def correct_pad(size, kernel=3):
  """keras.applications.imagenet_utils.correct_pad for a static (H, W)."""
  c = kernel // 2
  return tuple((c - (1 - s % 2), c) for s in size)


def relu6(x):
  return jnp.minimum(nn.relu(x), 6.0).astype(x.dtype)


class MobileNetV2(nn.Module):
  """keras.applications.MobileNetV2 as a Flax module.

  With `include_top=False` it returns the out_relu feature map (N, H/32, W/32, 1280 for alpha
  <= 1); with `include_top=True` the global average pool and the softmax 'predictions'.
  """

  include_top: bool = False
  alpha: float = 1.0
  num_classes: int = 1000
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32, BN computes in float32
  bn_training: Sequence[str] = ()  # BN layers in training mode when train=True

  def _bn(self, x, name, train, sow=False):
    bn = BatchNorm(momentum=MOBILENET_BN_MOMENTUM, epsilon=MOBILENET_BN_EPSILON,
                   dtype=self.dtype, sow_output=sow, name=name)
    return bn(x, use_running_average=not (train and name in self.bn_training))

  def _conv1x1(self, x, filters, name):
    return nn.Conv(filters, (1, 1), padding="VALID", use_bias=False, dtype=self.dtype,
                   name=name)(x)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(make_divisible(32 * self.alpha, 8), (3, 3), strides=(2, 2), padding="SAME",
                use_bias=False, dtype=self.dtype, name="Conv1")(x)
    x = relu6(self._bn(x, "bn_Conv1", train))
    self.sow("intermediates", "Conv1_relu", x)
    for block_id, p, cin, cout, stride, expansion in _block_plan(self.alpha):
      inputs = x
      if block_id:
        x = relu6(self._bn(self._conv1x1(x, expansion * cin, f"{p}expand"), f"{p}expand_BN",
                           train))
      channels = x.shape[-1]
      if stride == 2:
        (t, b), (l, r) = correct_pad(x.shape[1:3])
        x = jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))  # {p}pad
      x = DepthwiseConv3x3(channels, stride, "SAME" if stride == 1 else "VALID",
                           dtype=self.dtype, name=f"{p}depthwise")(x)
      x = relu6(self._bn(x, f"{p}depthwise_BN", train))
      residual = cin == cout and stride == 1
      # Without a residual the block ends with project_BN, a module: it sows its own output.
      x = self._bn(self._conv1x1(x, cout, f"{p}project"), f"{p}project_BN", train,
                   sow=not residual)
      if residual:
        x = inputs + x  # {p}add
        self.sow("intermediates", f"{p}add", x)
    x = self._conv1x1(x, last_conv_filters(self.alpha), "Conv_1")
    x = relu6(self._bn(x, "Conv_1_bn", train))
    self.sow("intermediates", "out_relu", x)
    if not self.include_top:
      return x
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # global_average_pooling2d
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="predictions")(x)
    return nn.softmax(x.astype(jnp.float32))


# The official Keras release files, as in keras/src/applications/mobilenet_v2.py: one per width
# and input size (every width it builds), without md5.
MOBILENET_V2_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


def mobilenet_v2_release(include_top: bool = False, image_size: int = 224,
                         alpha: float = 1.0) -> Release:
  """Keras' MobileNetV2 ImageNet file: for an input size without its own file Keras loads the
  224 one (with a warning), and so does this."""
  top = bool(include_top)
  rows = image_size if image_size in MOBILENET_V2_SIZES else 224
  if float(alpha) not in MOBILENET_V2_ALPHAS:
    raise WeightsError(f"config.model.alpha={alpha}: Keras releases MobileNetV2 ImageNet "
                       f"weights for alpha in {MOBILENET_V2_ALPHAS} only")
  tail = f"{float(alpha)}_{rows}" + ("" if top else "_no_top")
  fname = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{tail}.h5"
  return Release("mobilenet_v2", top, fname, MOBILENET_V2_BASE + fname, None,
                 f"mobilenet_v2_{float(alpha)}_{rows}" + ("" if top else "_notop"))


SPEC = BackboneSpec(
    name="mobilenet_v2",
    build=lambda include_top=False, alpha=1.0, dtype=jnp.float32, bn_training=(): MobileNetV2(
        include_top=include_top, alpha=alpha, dtype=dtype, bn_training=tuple(bn_training)),
    layer_names=mobilenet_v2_layer_names,
    min_size=32,  # Keras' min_size
    preprocess_mode="tf",
    takes_train=True,
    bn_names=mobilenet_v2_bn_names,
    keras_application="MobileNetV2",
    release=mobilenet_v2_release,
    alphas=MOBILENET_V2_ALPHAS,
)

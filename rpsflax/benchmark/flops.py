"""FLOPs of a config's forward pass and train step, counted from the model's own layers.

XLA's cost analysis cannot be the benchmark's count: on GPUs it leaves out the convolutions it
hands to cuDNN (docs/performance_cpu.md, "How the benchmark counts"). Here the
layers are found by walking the Flax model abstractly (`jax.eval_shape` of its init, every
nn.Conv, ConvReLU, DepthwiseConv3x3 and nn.Dense call intercepted: nothing runs) and counted
from the shapes they see: one multiply-accumulate (MAC) = 2 FLOPs,
  nn.Conv:          output pixels x kernel window x input channels per group x output channels
  ConvReLU:         the same, its conv's output pixels (before its pool) x 9 x in x out
  DepthwiseConv3x3: output elements x 9
  nn.Dense:         outputs x inputs.
Activations, pooling, BatchNorm, adds, preprocessing and the optimizer are not counted (the
convention of papers and of Keras' own GFLOP figures; they are a few percent here).

A train step is the whole model's forward plus the backward of the trainable part only (frozen
means frozen and free, rpsflax/optim.py): each trainable layer's kernel gradient (its MACs again)
and the input gradient of every layer called after the first trainable one (its MACs again),
none for a frozen backbone. Call order stands for dependency order: exact for the chains
(VGG16, the CNN, heads); for ResNet50 and MobileNetV2 it is exact when the backbone is frozen or
wholly trainable.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from rpsflax import optim
from rpsflax.models.layers import ConvReLU, DepthwiseConv3x3

SOURCE = "analytical: conv/dense MACs x 2 (rpsflax/benchmark/flops.py)"
XLA_SOURCE = "xla cost analysis of the compiled step"


@dataclasses.dataclass(frozen=True)
class Layer:
  path: tuple  # ('backbone', 'block1_conv1'): the layer's parameters' path
  macs: int    # per image, forward


def layer_macs(module, args, out) -> int:
  """MACs of one call of a conv/dense `module` on `args` giving `out`; 0 for other modules."""
  if isinstance(module, nn.Conv):
    cin = args[0].shape[-1] // module.feature_group_count
    return math.prod(out.shape[:-1]) * math.prod(module.kernel_size) * cin * out.shape[-1]
  if isinstance(module, ConvReLU):  # its output may be pooled: count its conv's pixels
    n, h, w, cin = args[0].shape
    if module.padding == "VALID":
      h, w = h - 2, w - 2
    return n * h * w * 9 * cin * module.features
  if isinstance(module, DepthwiseConv3x3):
    return math.prod(out.shape) * 9
  if isinstance(module, nn.Dense):
    return math.prod(out.shape[:-1]) * args[0].shape[-1] * out.shape[-1]
  return 0


def layers(config, model, *, features_only: bool = False) -> tuple[list, dict]:
  """([Layer] in call order, params shapes) of `model` on one image of the config's size:
  the whole model, or its backbone (`features`, what the forward figure times)."""
  found = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      macs = layer_macs(context.module, args, out)
      if macs:
        found.append(Layer(tuple(context.module.path), macs))
    return out

  size = int(config.data.image_size)
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  kwargs = {"method": "features"} if features_only else {"train": False}
  with nn.intercept_methods(count):
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, **kwargs))
  return found, shapes["params"]


def forward_flops(config, model, batch_size: int) -> float:
  """FLOPs of the backbone forward (preprocessing + backbone, as the forward figure runs it)."""
  found, _ = layers(config, model, features_only=True)
  return 2.0 * sum(layer.macs for layer in found) * batch_size


def train_step_flops(config, model, batch_size: int) -> float:
  """FLOPs of one train step of `config`: the whole forward + the trainable part's backward."""
  found, params = layers(config, model)
  labels = traverse_util.flatten_dict(optim.param_labels(params, config))
  macs, upstream_trains = 0, False
  for layer in found:
    trains = labels.get(layer.path + ("kernel",), optim.FROZEN) != optim.FROZEN
    macs += layer.macs * (1 + int(trains) + int(upstream_trains))
    upstream_trains = upstream_trains or trains
  return 2.0 * macs * batch_size


def uncounted_kernels(config, model) -> list[str]:
  """Kernel parameters no counted layer owns (a layer type this module does not know)."""
  found, params = layers(config, model)
  owned = {layer.path for layer in found}
  return sorted("/".join(p) for p in traverse_util.flatten_dict(params)
                if p[-1] == "kernel" and p[:-1] not in owned)

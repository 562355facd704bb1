"""Layers shared by the backbones, written for what XLA compiles well on every backend."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x):
  """Keras MaxPooling2D(2) ('valid'): odd sizes floor (15 -> 7), as `nn.max_pool` does.

  Written as crop + reshape + max instead of `nn.max_pool` (reduce_window): the same forward
  values, but its gradient is a plain compare-and-select, where reduce_window's gradient
  (select_and_scatter) runs on XLA:CPU as one scalar scatter per pooled value (figures:
  docs/performance_cpu.md, "Figures behind the code's choices").

  Ties: where several inputs of a window equal its max, JAX's max splits the gradient equally
  among them; TensorFlow's MaxPoolGrad gives it all to the first. Both pools follow a ReLU here,
  so exact ties are almost always zeros, whose gradient the ReLU zeroes either way; non-zero
  float ties are vanishingly rare. The gradient parity tests hold this against TensorFlow.
  """
  n, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2, :].reshape(n, h2, 2, w2, 2, c)
  return jnp.max(x, axis=(2, 4))


class ConvReLU(nn.Module):
  """keras Conv2D(features, 3, activation='relu'), followed by MaxPooling2D(2) when `pool`.

  The parameters are `nn.Conv`'s (`kernel` (3, 3, in, features), `bias`, float32, the same
  initialisers), so weights convert and models initialise as with `nn.Conv` + `nn.relu`. With
  `pool`, the 2x2 max is taken before the bias and the ReLU: relu(x + b) rises with x, so
  max(relu(x + b)) = relu(max(x) + b) in floats too (the same bits as conv -> ReLU -> pool), and
  the bias, the ReLU and their gradients run on a quarter of the values (the cats-vs-dogs CNN's
  train step: docs/performance_cpu.md, "Figures behind the code's choices"). The kernel and
  input gradients are the same; the bias gradient sums the same terms in another order.
  """

  features: int
  padding: str = "SAME"
  pool: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), self.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.pool:
      y = max_pool_2x2(y)
    return nn.relu(y + bias)


class BatchNorm(nn.Module):
  """keras.layers.BatchNormalization over the last axis, with Flax's variable names.

  Parameters `scale` (Keras gamma) and `bias` (beta) in 'params'; `mean` and `var` (Keras'
  moving_mean, moving_variance) in 'batch_stats', as `flax.linen.BatchNorm` names them.
  Arithmetic as Keras' TensorFlow backend does it (tf.nn.batch_normalization):
  inv = rsqrt(var + eps) * gamma; y = x * inv + (beta - mean * inv), in float32 for float16 and
  bfloat16 inputs (Keras upcasts BN inputs to at least float32), then cast to `dtype`.

  `use_running_average=True` is Keras' inference mode: the moving statistics normalise and are
  never updated. False is Keras' training mode: batch moments (mean, then the mean squared
  difference from it, as tf.nn.moments) normalise, and the moving statistics move by
  `momentum` (moving = moving * momentum + batch * (1 - momentum)), except during init.
  Under jit with a batch-sharded input the batch moments are over the global batch.
  """

  momentum: float = 0.99
  epsilon: float = 1e-3
  dtype: Any = jnp.float32
  sow_output: bool = False  # sow the output as 'intermediates'/<this layer>/output

  @nn.compact
  def __call__(self, x, *, use_running_average: bool = True):
    features = x.shape[-1]
    gamma = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    beta = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    moving_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    moving_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))  # as Keras: at least float32
    if use_running_average:
      mean, var = moving_mean.value.astype(x.dtype), moving_var.value.astype(x.dtype)
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - jax.lax.stop_gradient(mean)), axes)
      if not self.is_initializing():
        m = self.momentum
        moving_mean.value = moving_mean.value * m + jax.lax.stop_gradient(mean) * (1.0 - m)
        moving_var.value = moving_var.value * m + jax.lax.stop_gradient(var) * (1.0 - m)
    inv = jax.lax.rsqrt(var + self.epsilon) * gamma.astype(x.dtype)
    y = (x * inv + (beta.astype(x.dtype) - mean * inv)).astype(self.dtype)
    if self.sow_output:
      self.sow("intermediates", "output", y)
    return y


class DepthwiseConv3x3(nn.Module):
  """keras.layers.DepthwiseConv2D(3, strides, depth_multiplier=1, use_bias=False), NHWC.

  The kernel is Flax's grouped-conv layout, (3, 3, 1, C) under the name 'kernel', as
  `nn.Conv(C, (3, 3), feature_group_count=C)` would hold it, so converted weights do not depend
  on how it is computed. It is computed as nine shifted multiply-adds, which XLA fuses into one
  loop: on XLA:CPU a grouped convolution with one channel per group runs far slower than
  TensorFlow's depthwise kernel, this about as fast (docs/performance_cpu.md). `padding`: 'SAME' (stride 1) or 'VALID'
  (on an input Keras' correct_pad already padded).
  """

  features: int
  strides: int = 1
  padding: str = "SAME"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, self.features),
                        jnp.float32)
    x = jnp.asarray(x, self.dtype)
    k = kernel.astype(self.dtype)[:, :, 0, :]
    if self.padding == "SAME":
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    s = self.strides
    h = (x.shape[1] - 3) // s + 1
    w = (x.shape[2] - 3) // s + 1
    out = None
    for i in range(3):
      for j in range(3):
        tap = x[:, i:i + s * (h - 1) + 1:s, j:j + s * (w - 1) + 1:s, :] * k[i, j]
        out = tap if out is None else out + tap
    return out

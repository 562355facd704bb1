"""Layers shared by the backbones, written for what XLA compiles well on every backend."""

import jax.numpy as jnp


def max_pool_2x2(x):
  """Keras MaxPooling2D(2) ('valid'): odd sizes floor (15 -> 7), as `nn.max_pool` does.

  Written as crop + reshape + max instead of `nn.max_pool` (reduce_window): the same forward
  values, but its gradient is a plain compare-and-select, where reduce_window's gradient
  (select_and_scatter) runs on XLA:CPU as one scalar scatter per pooled value (2.3x slower on
  the cats-vs-dogs CNN's first layer, forward + backward).

  Ties: where several inputs of a window equal its max, JAX's max splits the gradient equally
  among them; TensorFlow's MaxPoolGrad gives it all to the first. Both pools follow a ReLU here,
  so exact ties are almost always zeros, whose gradient the ReLU zeroes either way; non-zero
  float ties are vanishingly rare. The gradient parity tests hold this against TensorFlow.
  """
  n, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2, :].reshape(n, h2, 2, w2, 2, c)
  return jnp.max(x, axis=(2, 4))

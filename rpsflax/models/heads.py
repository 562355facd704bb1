"""Classification heads a config can swap: pool -> dropout -> [dense -> act -> dropout]* -> dense.

Returns float32 logits; the loss (softmax or sigmoid) lives in the training code.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

POOLINGS = ("max", "avg", "flatten")
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "swish": nn.swish,
               "linear": lambda x: x}


class Head(nn.Module):
  num_classes: int
  pooling: str = "max"          # 'max' | 'avg' (global) | 'flatten'
  dropout: float = 0.5          # before the first dense layer, as both tutorials do
  hidden: Sequence[int] = ()    # widths of hidden dense layers, named hidden_0, hidden_1, ...
  hidden_activation: str = "relu"
  hidden_dropout: float = 0.0   # after each hidden layer
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, *, train: bool):
    x = features
    if self.pooling == "max":
      x = jnp.max(x, axis=(1, 2))
    elif self.pooling == "avg":
      x = jnp.mean(x, axis=(1, 2))
    elif self.pooling == "flatten":
      x = x.reshape((x.shape[0], -1))  # row-major over (H, W, C), as Keras' Flatten
    else:
      raise ValueError(f"head.pooling={self.pooling!r}: use one of {POOLINGS}")
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    act = ACTIVATIONS[self.hidden_activation]
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, dtype=self.dtype, name=f"hidden_{i}")(x))
      x = nn.Dropout(self.hidden_dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="predictions")(x)
    return x.astype(jnp.float32)

"""build_model(config): the one place a config becomes a Flax module.

Every model is a `Classifier(backbone, head)`, so parameter paths read `backbone/...` and
`head/...` and freezing patterns in configs read naturally (`config.trainable = ('head/.*',)`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpsflax.models.cnn import CatsDogsCNN, cnn_conv_names
from rpsflax.models.heads import Head
from rpsflax.models.vgg import VGG16, vgg16_layer_names

BACKBONES = ("vgg16", "cnn")  # config.model.name
DTYPES = ("float32", "bfloat16", "float16")  # config.model.dtype: the compute dtype


class Classifier(nn.Module):
  backbone: nn.Module
  head: Head

  def __call__(self, x, *, train: bool = False):
    return self.head(self.backbone(x), train=train)

  def features(self, x):
    """Backbone output alone (used for cached features and the forward benchmark)."""
    return self.backbone(x)

  def classify(self, features, *, train: bool = False):
    """Head alone, on backbone features."""
    return self.head(features, train=train)


def compute_dtype(config) -> Any:
  return jnp.dtype(config.model.dtype)


def build_model(config) -> Classifier:
  dtype = compute_dtype(config)
  name = config.model.name
  if name == "vgg16":
    backbone = VGG16(include_top=False, dtype=dtype)
  elif name == "cnn":
    backbone = CatsDogsCNN(dtype=dtype)
  else:
    raise ValueError(f"config.model.name={name!r}: use one of {BACKBONES}")
  h = config.head
  head = Head(num_classes=h.num_classes, pooling=h.pooling, dropout=h.dropout,
              hidden=tuple(h.hidden), hidden_activation=h.hidden_activation,
              hidden_dropout=h.hidden_dropout, dtype=dtype)
  return Classifier(backbone=backbone, head=head)


def keras_layer_map(config) -> dict[str, tuple[str, ...]]:
  """Keras layer name -> Flax parameter path, for converting a Keras file of this model.

  VGG16 files (the ImageNet release) fill the backbone only. A cats-vs-dogs file saved by
  the tutorial's Sequential model also fills the head (dense -> hidden_0, dense_1 -> predictions).
  """
  if config.model.name == "vgg16":
    return {n: ("backbone", n) for n in vgg16_layer_names(include_top=False)}
  if config.model.name == "cnn":
    layers = {n: ("backbone", n) for n in cnn_conv_names()}
    layers.update({"dense": ("head", "hidden_0"), "dense_1": ("head", "predictions")})
    return layers
  raise ValueError(f"config.model.name={config.model.name!r}: use one of {BACKBONES}")


__all__ = ["Classifier", "Head", "VGG16", "CatsDogsCNN", "build_model", "keras_layer_map",
           "compute_dtype", "vgg16_layer_names", "cnn_conv_names"]

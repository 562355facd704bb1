"""build_model(config): the one place a config becomes a Flax module.

Every model is a `Classifier(backbone, head)`, so parameter paths read `backbone/...` and
`head/...` and freezing patterns in configs read naturally (`config.trainable = ('head/.*',)`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpsflax.models.cnn import CatsDogsCNN, cnn_conv_names
from rpsflax.models.heads import Head
from rpsflax import optim
from rpsflax.models.mobilenet_v2 import MobileNetV2, mobilenet_v2_bn_names, mobilenet_v2_layer_names
from rpsflax.models.resnet import ResNet50, resnet50_bn_names, resnet50_layer_names
from rpsflax.models.vgg import VGG16, vgg16_layer_names

# The one list of model names, config.model.name (config_check reads it). The ImageNet backbones below are
# keras.applications models with their Keras layer names; 'cnn' is the cats-vs-dogs convnet.
IMAGENET_BACKBONES = ("vgg16", "resnet50", "mobilenet_v2")
BACKBONES = IMAGENET_BACKBONES + ("cnn",)
# Models with BatchNorm: their variables hold 'batch_stats' beside 'params'.
BATCHNORM_BACKBONES = ("resnet50", "mobilenet_v2")
DTYPES = ("float32", "bfloat16", "float16")  # config.model.dtype: the compute dtype


def backbone_module(name: str, *, include_top: bool = False, alpha: float = 1.0,
                    dtype: Any = jnp.float32, bn_training=()) -> nn.Module:
  """The standalone Keras application `name` (VGG16, ResNet50, MobileNetV2)."""
  if name == "vgg16":
    return VGG16(include_top=include_top, dtype=dtype)
  if name == "resnet50":
    return ResNet50(include_top=include_top, dtype=dtype, bn_training=tuple(bn_training))
  if name == "mobilenet_v2":
    return MobileNetV2(include_top=include_top, alpha=alpha, dtype=dtype,
                       bn_training=tuple(bn_training))
  raise ValueError(f"backbone {name!r}: use one of {IMAGENET_BACKBONES}")


def backbone_layer_names(name: str, include_top: bool = False, alpha: float = 1.0) -> list[str]:
  """Keras' names of the weighted layers of backbone `name`, in Keras' order."""
  if name == "vgg16":
    return vgg16_layer_names(include_top)
  if name == "resnet50":
    return resnet50_layer_names(include_top)
  if name == "mobilenet_v2":
    return mobilenet_v2_layer_names(include_top, alpha)
  raise ValueError(f"backbone {name!r}: use one of {IMAGENET_BACKBONES}")


class Classifier(nn.Module):
  backbone: nn.Module
  head: Head

  def __call__(self, x, *, train: bool = False):
    return self.head(self._backbone(x, train), train=train)

  def _backbone(self, x, train):
    if isinstance(self.backbone, (ResNet50, MobileNetV2)):  # BatchNorm: mode depends on train
      return self.backbone(x, train=train)
    return self.backbone(x)

  def features(self, x):
    """Backbone output alone, in inference mode (used for cached features and the forward
    benchmark)."""
    return self._backbone(x, False)

  def classify(self, features, *, train: bool = False):
    """Head alone, on backbone features."""
    return self.head(features, train=train)


def bn_training_layers(config) -> tuple[str, ...]:
  """Keras names of the backbone's BatchNorm layers that run in training mode in a train step
  (see config.model.bn_trainable): none unless bn_trainable, then those whose gamma trains."""
  name = config.model.name
  if name not in BATCHNORM_BACKBONES or not config.model.get("bn_trainable", False):
    return ()
  layers = backbone_layer_names(name, False, config.model.get("alpha", 1.0))
  return tuple(n for n in layers if n in _bn_names(name, config)
               and optim.is_trainable(f"backbone/{n}/scale", config))


def _bn_names(name, config) -> set[str]:
  if name == "resnet50":
    return set(resnet50_bn_names())
  return set(mobilenet_v2_bn_names(config.model.get("alpha", 1.0)))


def compute_dtype(config) -> Any:
  return jnp.dtype(config.model.dtype)


def build_model(config) -> Classifier:
  dtype = compute_dtype(config)
  name = config.model.name
  if name in IMAGENET_BACKBONES:
    backbone = backbone_module(name, alpha=config.model.get("alpha", 1.0), dtype=dtype,
                               bn_training=bn_training_layers(config))
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

  VGG16, ResNet50 and MobileNetV2 files (the ImageNet releases) fill the backbone only. A cats-vs-dogs file saved by
  the tutorial's Sequential model also fills the head (dense -> hidden_0, dense_1 -> predictions).
  """
  if config.model.name in IMAGENET_BACKBONES:
    names = backbone_layer_names(config.model.name, False, config.model.get("alpha", 1.0))
    return {n: ("backbone", n) for n in names}
  if config.model.name == "cnn":
    layers = {n: ("backbone", n) for n in cnn_conv_names()}
    layers.update({"dense": ("head", "hidden_0"), "dense_1": ("head", "predictions")})
    return layers
  raise ValueError(f"config.model.name={config.model.name!r}: use one of {BACKBONES}")


__all__ = ["Classifier", "Head", "VGG16", "ResNet50", "MobileNetV2", "CatsDogsCNN",
           "build_model", "keras_layer_map", "backbone_module", "backbone_layer_names",
           "compute_dtype", "bn_training_layers", "vgg16_layer_names", "resnet50_layer_names",
           "mobilenet_v2_layer_names", "cnn_conv_names", "BACKBONES", "IMAGENET_BACKBONES",
           "BATCHNORM_BACKBONES"]

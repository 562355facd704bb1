"""The one registry of backbones, and build_model(config): where a config becomes a Flax module.

Each model file declares one `SPEC` (rpsflax.models.spec.BackboneSpec); `REGISTRY` below holds
them by config.model.name, and every other module asks `get_spec(name)` rather than testing the
name. Adding a backbone is its file plus one line here (docs/architecture.md shows it).

Every model is a `Classifier(backbone, head)`, so parameter paths read `backbone/...` and
`head/...` and freezing patterns in configs read naturally (`config.trainable = ('head/.*',)`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rpsflax import optim
from rpsflax.models import cnn, mobilenet_v2, resnet, vgg
from rpsflax.models.cnn import CatsDogsCNN, cnn_conv_names
from rpsflax.models.heads import Head
from rpsflax.models.mobilenet_v2 import MobileNetV2, mobilenet_v2_layer_names
from rpsflax.models.resnet import ResNet50, resnet50_layer_names
from rpsflax.models.spec import BackboneSpec, Release
from rpsflax.models.vgg import VGG16, vgg16_layer_names

# config.model.name -> its spec: one line per backbone.
REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in (
    vgg.SPEC,
    resnet.SPEC,
    mobilenet_v2.SPEC,
    cnn.SPEC,
)}

# Views of the registry (config_check and the CLIs list these).
BACKBONES = tuple(REGISTRY)
# keras.applications models, with Keras' layer names and an official ImageNet release.
IMAGENET_BACKBONES = tuple(n for n, s in REGISTRY.items() if s.release is not None)
# Models with BatchNorm: their variables hold 'batch_stats' beside 'params'.
BATCHNORM_BACKBONES = tuple(n for n, s in REGISTRY.items() if s.bn_names is not None)
DTYPES = ("float32", "bfloat16", "float16")  # config.model.dtype: the compute dtype


def get_spec(name: str) -> BackboneSpec:
  """The spec of backbone `name` (config.model.name)."""
  if name not in REGISTRY:
    raise ValueError(f"config.model.name={name!r}: no such backbone; use one of {BACKBONES}")
  return REGISTRY[name]


def backbone_module(name: str, *, include_top: bool = False, alpha: float = 1.0,
                    dtype: Any = jnp.float32, bn_training=()) -> nn.Module:
  """The standalone backbone `name` (a Keras application with its top when include_top)."""
  return get_spec(name).build(include_top=include_top, alpha=alpha, dtype=dtype,
                              bn_training=tuple(bn_training))


def backbone_layer_names(name: str, include_top: bool = False, alpha: float = 1.0) -> list[str]:
  """Keras' names of the weighted layers of backbone `name`, in Keras' order."""
  return get_spec(name).layer_names(include_top, alpha)


class Classifier(nn.Module):
  backbone: nn.Module
  head: Head
  backbone_takes_train: bool = False  # BatchNorm backbones: their mode depends on train

  def __call__(self, x, *, train: bool = False):
    return self.head(self._backbone(x, train), train=train)

  def _backbone(self, x, train):
    if self.backbone_takes_train:
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
  spec = get_spec(config.model.name)
  if spec.bn_names is None or not config.model.bn_trainable:
    return ()
  alpha = config.model.alpha
  bn = set(spec.bn_names(alpha))
  return tuple(n for n in spec.layer_names(False, alpha)
               if n in bn and optim.is_trainable(f"backbone/{n}/scale", config))


def compute_dtype(config) -> Any:
  return jnp.dtype(config.model.dtype)


def build_model(config) -> Classifier:
  dtype = compute_dtype(config)
  spec = get_spec(config.model.name)
  backbone = spec.build(alpha=config.model.alpha, dtype=dtype,
                        bn_training=bn_training_layers(config))
  h = config.head
  head = Head(num_classes=h.num_classes, pooling=h.pooling, dropout=h.dropout,
              hidden=tuple(h.hidden), hidden_activation=h.hidden_activation,
              hidden_dropout=h.hidden_dropout, dtype=dtype)
  return Classifier(backbone=backbone, head=head, backbone_takes_train=spec.takes_train)


def keras_layer_map(config) -> dict[str, tuple[str, ...]]:
  """Keras layer name -> Flax parameter path, for converting a Keras file of this model.

  The backbone's layers fill the backbone (all an ImageNet release holds). A backbone whose
  spec names head layers (the cats-vs-dogs tutorial's dense and dense_1) fills the head from a
  file that has them too.
  """
  spec = get_spec(config.model.name)
  layers = {n: ("backbone", n) for n in spec.layer_names(False, config.model.alpha)}
  layers.update({k: ("head", m) for k, m in spec.head_layers.items()})
  return layers


__all__ = ["Classifier", "Head", "VGG16", "ResNet50", "MobileNetV2", "CatsDogsCNN",
           "BackboneSpec", "Release", "REGISTRY", "get_spec",
           "build_model", "keras_layer_map", "backbone_module", "backbone_layer_names",
           "compute_dtype", "bn_training_layers", "vgg16_layer_names", "resnet50_layer_names",
           "mobilenet_v2_layer_names", "cnn_conv_names", "BACKBONES", "IMAGENET_BACKBONES",
           "BATCHNORM_BACKBONES"]

"""What the package knows about one backbone, declared once in its model file.

Every model file (vgg.py, resnet.py, mobilenet_v2.py, cnn.py) ends with one `SPEC`; the
registry in `rpsflax.models` collects them, and config checks, weight releases, the converter,
the Keras reference models and the benchmark all read it instead of testing the name.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple


class Release(NamedTuple):
  """One official Keras ImageNet weights file."""
  backbone: str
  include_top: bool
  fname: str
  url: str
  md5: str | None  # None where Keras' source gives none (MobileNetV2): get_file checks nothing
  folder: str      # where scripts/convert_keras_weights.py writes its conversion, in weights/


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """One backbone. Callables take the width `alpha`, which backbones without one ignore."""

  name: str  # config.model.name
  # build(include_top=, alpha=, dtype=, bn_training=) -> the standalone Flax module.
  build: Callable[..., Any]
  # layer_names(include_top, alpha) -> Keras' names of its weighted layers, in Keras' order.
  layer_names: Callable[[bool, float], list[str]]
  min_size: int  # smallest input side (every pool still sees at least one pixel)
  # Keras' preprocessing mode (rpsflax.preprocess.MODES: 'caffe', 'tf', 'rescale').
  preprocess_mode: str
  takes_train: bool = False  # called with train= (its BatchNorm layers depend on it)
  # bn_names(alpha) -> its BatchNorm layers' Keras names; None: it has no BatchNorm.
  bn_names: Callable[[float], list[str]] | None = None
  keras_application: str = ""  # keras.applications.<this>; '' when it is not one
  # release(include_top, image_size, alpha) -> the official ImageNet file; None: there is none.
  release: Callable[[bool, int, float], Release] | None = None
  alphas: tuple[float, ...] = ()  # the widths (config.model.alpha) it builds; () if it has none
  top_size: int = 0  # the input side its top is built for (VGG16's fc1: 224); 0: any
  # Keras layer -> head module, for files that hold the head too (the cats-vs-dogs tutorial's).
  head_layers: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def keras_kwargs(self, alpha: float = 1.0) -> dict:
    """The width argument of its Keras application, when it has one."""
    return {"alpha": float(alpha)} if self.alphas else {}

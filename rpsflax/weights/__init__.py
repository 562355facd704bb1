"""Keras weight files -> Flax parameters, matched by Keras layer name and checked against the module.

One job per module:
- `keras_files`: the Keras file layouts read (legacy HDF5, Keras 3 .weights.h5, .keras);
- `convert`: Keras layers matched by name to Flax modules, every shape checked; targets;
- `converted`: converted folders (an Orbax checkpoint plus manifest.json, written last);
- `releases`: the official ImageNet releases (from the registry of backbones) and config.weights.

The names below are what the rest of the package and the scripts use; import them from here.
No TensorFlow at import time: Keras is imported only to download a release file or read `.keras`.
"""

from rpsflax.models import Release
from rpsflax.weights.convert import (COLLECTIONS, LayerMap, backbone_target, convert_keras_file,
                                     default_optional, load_keras_backbone, load_keras_h5,
                                     match_weights, model_target, shapes_of, vgg16_target)
from rpsflax.weights.converted import (CHECKPOINT, FORMAT, MANIFEST, converted_as_keras,
                                       load_converted, read_manifest, save_converted)
from rpsflax.weights.keras_files import Weights, file_md5, read_keras_weights
from rpsflax.weights.releases import (check_spec, download_release, download_vgg16,
                                      imagenet_release, load_for_model,
                                      load_variables_for_model, release, release_for_config,
                                      weights_for_spec)

__all__ = ["Release", "COLLECTIONS", "LayerMap", "backbone_target", "convert_keras_file",
           "default_optional", "load_keras_backbone", "load_keras_h5", "match_weights",
           "model_target", "shapes_of", "vgg16_target", "CHECKPOINT", "FORMAT", "MANIFEST",
           "converted_as_keras", "load_converted", "read_manifest", "save_converted", "Weights",
           "file_md5", "read_keras_weights", "check_spec", "download_release", "download_vgg16",
           "imagenet_release", "load_for_model", "load_variables_for_model", "release",
           "release_for_config", "weights_for_spec"]

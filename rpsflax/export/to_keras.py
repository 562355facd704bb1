"""--format=keras: a Keras 3 `.keras` file of the model the tutorials build, with the checkpoint's
weights (and BatchNorm statistics) written back into it by Keras layer name.

The model: for VGG16, ResNet50 and MobileNetV2, `keras.applications` (weights=None, the config's
alpha) called with training=False under the config's head (rpsflax.keras_models.classifier, the
benchmark's Keras peer); for the cats-vs-dogs CNN, the tutorial's flat Sequential (conv2d ...
dense, dense_1 when the head has one hidden layer, as the tutorial's; hidden_i / predictions
otherwise). Plain Keras loads it (`keras.saving.load_model`) on any backend, no rpsflax needed.

Preprocessing is the caller's job, as in the tutorials: the model takes float32 pixels already
passed through the function the manifest names (keras.applications.<model>.preprocess_input, or
x * (1/255) for the CNN), and returns the tutorial's output: softmax probabilities [batch, C], or
for one class the sigmoid P(class_names[1]) [batch, 1].

The weights go back by the converter's own map (rpsflax.weights.match_weights, Keras -> Flax),
read in reverse: every Keras layer is matched by name and shape, nothing by position.
"""

import numpy as np

from rpsflax import keras_models, models, preprocess, weights
from rpsflax.benchmark.keras_peer import keras_spec
from rpsflax.errors import ExportError
from rpsflax.export import parity

SUFFIX = ".keras"
DEFAULT_MAX_DIFF = parity.KERNELS_MAX_DIFF  # justified in parity.py
PREPROCESSING_INSIDE = False
# Head activations whose Keras layer computes what Flax's does. Flax's gelu is the tanh
# approximation; Keras' 'gelu' string is the exact erf form, and its approximate form needs a
# lambda that a safe .keras file cannot hold.
EXACT_ACTIVATIONS = ("relu", "tanh", "swish", "linear")
RUNTIME = "keras.saving.load_model(path).predict(preprocess_input(images))"


def check(config, options: dict) -> None:
  act = config.head.hidden_activation
  if config.head.hidden and act not in EXACT_ACTIVATIONS:
    raise ExportError(f"--format={options.get('format', 'keras')}: head.hidden_activation="
                      f"{act!r} has no Keras layer that computes Flax's {act} (Keras layers: "
                      f"{', '.join(EXACT_ACTIVATIONS)}); use --format=stablehlo for this model")


def _keras():
  import keras  # noqa: PLC0415  (TensorFlow/Keras only on this route)

  return keras


def _head_names(config) -> tuple[list[str], list[str]]:
  """(Keras names, Flax names) of the head's dense layers."""
  flax_names = [f"hidden_{i}" for i in range(len(config.head.hidden))] + ["predictions"]
  tutorial = models.get_spec(config.model.name).head_layers  # the tutorial's Sequential's
  if tutorial and len(config.head.hidden) == len(tutorial) - 1:
    return list(tutorial), [tutorial[k] for k in tutorial]
  return flax_names, flax_names


def build_model(config):
  """The Keras model, random weights."""
  k = _keras()
  if not models.get_spec(config.model.name).keras_application:  # the tutorial's Sequential
    size = int(config.data.image_size)
    head = _head_spec(config)
    return k.Sequential([k.Input((size, size, 3)), *keras_models.cnn_layers(),
                         *keras_models.head_layers(head, _head_names(config)[0])],
                        name="sequential")
  compiled, _ = keras_models.classifier(keras_spec(config))
  # The same layers as an uncompiled model: the file holds no optimizer (whose unbuilt state
  # Keras would warn about on every load).
  return k.Model(compiled.inputs, compiled.outputs, name=f"{config.model.name}_classifier")


def _head_spec(config) -> dict:
  head = config.head.to_dict()
  head["hidden"] = tuple(head["hidden"])
  return head


def layer_map(config) -> dict[str, tuple[str, ...]]:
  """Keras layer name -> Flax module path, backbone and head."""
  out = {n: ("backbone", n) for n in models.backbone_layer_names(
      config.model.name, False, config.model.alpha)}
  keras_names, flax_names = _head_names(config)
  out.update({k: ("head", f) for k, f in zip(keras_names, flax_names)})
  return out


def _weighted_layers(model) -> dict:
  """{name: layer} of every layer holding weights, inside nested models too."""
  out = {}
  for layer in model.layers:
    if hasattr(layer, "layers"):
      out.update(_weighted_layers(layer))
    elif layer.weights:
      out[layer.name] = layer
  return out


def _leaf(variables, path, name) -> np.ndarray:
  collection, leaf = name.split("/") if "/" in name else ("params", name)
  tree = variables[collection]
  for k in path:
    tree = tree[k]
  return np.asarray(tree[leaf])


def keras_model(source):
  """The Keras model holding the checkpoint's variables."""
  model = build_model(source.config)
  layers = _weighted_layers(model)
  keras_weights = {n: [np.asarray(w) for w in layer.get_weights()] for n, layer in layers.items()}
  variables = source.variables
  _, matched = weights.match_weights(keras_weights, weights.shapes_of(variables),
                                     layer_map(source.config), source="the Keras model")
  for kname, entry in matched.items():
    path = tuple(entry["flax_path"].split("/"))
    arrays = [_leaf(variables, path, n) for n in entry["weights"]]
    layers[kname].set_weights([a.reshape(w.shape).astype(w.dtype)
                               for a, w in zip(arrays, keras_weights[kname], strict=True)])
  return model


def write(source, path, options: dict) -> None:
  keras_model(source).save(str(path))


def probabilities(model, config, images) -> np.ndarray:
  """[N, C] probabilities of the tutorial's model on uint8 images, preprocessed as the manifest
  says (a sigmoid output p becomes [1 - p, p])."""
  x = keras_models.preprocess(preprocess.PREPROCESS_MODES[config.preprocess], np.asarray(images))
  p = np.asarray(model.predict(x, verbose=0), np.float64)
  return np.concatenate([1.0 - p, p], axis=-1) if p.shape[-1] == 1 else p


def runner(path, source, options: dict):
  model = _keras().saving.load_model(str(path))
  return lambda images: probabilities(model, source.config, images)


def interface(source, options: dict) -> dict:
  size, n = source.image_size, int(source.config.head.num_classes)
  meaning = (f"sigmoid P({source.class_names[-1]}); P({source.class_names[0]}) = 1 - p"
             if n == 1 else "softmax, one column per class_names entry, in order")
  return {
      "input": {"shape": [None, size, size, 3], "dtype": "float32", "layout": "NHWC",
                "channels": "RGB before preprocessing (preprocess_input makes BGR for caffe mode)",
                "resize": f"to {size}x{size} with '{source.config.data.resize_method}' "
                          "interpolation, as rpsflax.predict reads files"},
      "output": {"shape": [None, n], "dtype": "float32", "meaning": meaning},
      "runtime": RUNTIME,
  }
